"""Faker-based data generator: a content catalogue and a skewed stream of engagement events."""
