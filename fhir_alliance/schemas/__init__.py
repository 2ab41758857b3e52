"""marshmallow schemas for the JSON form of domain records: shared by the service and the CLI."""
