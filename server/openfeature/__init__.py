"""OpenFeature: flagd's evaluation and sync protocols on the gRPC port, OFREP over HTTP.

Every answer comes from the read model (server/changes/read_model.py) through
answers.py, so these protocols and platform_admin.v1 can never disagree; streams follow
the change stream through changes.py alone. service.py wires the parts into the App.
"""
