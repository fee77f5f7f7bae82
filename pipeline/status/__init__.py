"""The status view: ``read`` samples the services, ``health`` builds and judges the report, ``render`` prints it."""
