"""The Apache Beam pipeline: Debezium topics -> decode -> join content -> metrics -> sinks (``pipeline.job``)."""
