"""Generated stubs of the seriesflow.v1 contract (proto/seriesflow/v1). Do not edit: `make proto`."""
