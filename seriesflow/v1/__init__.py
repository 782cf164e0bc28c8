"""Generated stubs of the seriesflow.v1 contract (proto/). Do not edit: run `make proto`."""
