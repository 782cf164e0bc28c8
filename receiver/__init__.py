"""The seriesflow receiver: DICOM C-STORE in, durable spool, series updates out to the store.

Follow one instance through the modules in order: server -> intake -> header ->
record -> spool -> tracker -> flusher/updates -> client; app wires them, config configures them.
"""
