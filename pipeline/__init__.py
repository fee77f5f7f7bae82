"""The Apache Beam pipeline: Debezium topics -> decode -> join content -> metrics -> sinks.

Not built yet: issue 7 (streaming pipeline on Beam) brings it. The package exists so the layout
and packaging are final.
"""
