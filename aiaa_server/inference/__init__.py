"""Running a model: request params, pre-transforms → engine → post-transforms → writer, as a service."""
