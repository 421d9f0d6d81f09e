"""Dev/test hub: a real Triton Inference Server (the tritonserver nvidia-pytriton bundles) over the
model repository. `railgate hub` runs it; `hub.server.Hub` starts and stops it from Python."""
