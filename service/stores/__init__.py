"""Where state lives and how jobs reach a worker, behind the job layer's ports: SQLite and input files
(embedded), modal.Dicts and FunctionCalls (Modal), result objects on local disk or S3. No web framework."""
