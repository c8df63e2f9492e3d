"""Tools for users that talk to a server over HTTP: akidb import and akidb export."""
