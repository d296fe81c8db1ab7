"""The local stack behind `make up`: stand-ins for the parts of production that cannot run on
one machine (docs/local-stack.md says which plays which part, and why)."""
