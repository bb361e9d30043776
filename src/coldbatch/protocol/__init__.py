"""Wire format shared by the pipeline and the server: endpoints, limits, line shapes, error codes."""
