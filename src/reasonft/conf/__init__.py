"""The Hydra configs (config groups as folders of yaml files), shipped with the package and read by
run.py as `pkg://reasonft.conf`."""
