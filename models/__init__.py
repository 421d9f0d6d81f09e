"""Model builders and the Triton model repository they write (`railgate models build`)."""
