"""The native local stack: Postgres, Redis, Kafka (KRaft) and Kafka Connect with Debezium."""
