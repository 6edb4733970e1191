"""Plain-framework implementations of CSKD's steps, to compare keras-cskd against."""
