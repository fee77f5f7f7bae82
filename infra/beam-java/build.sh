#!/usr/bin/env bash
# Compiles Beam's ServerFactory with infra/beam-java/server-factory.patch (see its header) into a
# jar that goes ahead of the Flink jars on the classpath (a jar, not a folder: the job server stages
# its classpath's files to a session cluster). Called by infra/bootstrap.sh --flink
# (make flink-bootstrap):
#   infra/beam-java/build.sh <folder of the Flink and Beam jars> <folder to write the jar to>
# The source is the sources jar of the beam-sdks-java-core version in that folder, from Maven
# Central; javac (a JDK) compiles it against the same jars.
set -euo pipefail
lib=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
core=$(cd "$lib" && ls beam-sdks-java-core-*.jar | grep -v sources | head -n 1)
version=${core#beam-sdks-java-core-}
version=${version%.jar}
work="$out.build"
rm -rf "$work" "$out"
mkdir -p "$work/src" "$work/classes" "$out"
mvn -B -q dependency:copy -Dartifact="org.apache.beam:beam-sdks-java-core:$version:jar:sources" -DoutputDirectory="$work"
(cd "$work/src" && unzip -q "$work/beam-sdks-java-core-$version-sources.jar" org/apache/beam/sdk/fn/server/ServerFactory.java)
patch -d "$work/src" -p1 --forward --no-backup-if-mismatch <"$here/server-factory.patch"
javac --release 11 -nowarn -cp "$lib/*" -d "$work/classes" "$work/src/org/apache/beam/sdk/fn/server/ServerFactory.java"
jar cf "$out/beam-server-factory-patched.jar" -C "$work/classes" .
rm -rf "$work"
