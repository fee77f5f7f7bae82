"""The Flex Template's FLEX_TEMPLATE_PYTHON_PY_FILE: the launcher runs this file with the template's
parameters as ``--name=value`` arguments. The code is ``pipeline.dataflow_launch`` (installed in the
launcher image); this file only calls it, so that no folder of the package is put first on sys.path."""

import sys

from pipeline.dataflow_launch import main

if __name__ == "__main__":
    sys.exit(main())
