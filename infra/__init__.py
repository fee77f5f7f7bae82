"""Infrastructure: settings, the native local stack and its configuration files."""
