"""The function under the local mapping: its spec, its interpreter, its worker processes."""
