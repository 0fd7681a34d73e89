"""The library every stage script and test imports."""
