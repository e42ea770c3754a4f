"""Command-line applications that use a trained run on a user's own images
(`python -m jaxvision.apps.<name> --help`)."""
