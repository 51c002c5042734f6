"""The HTTP listener (PLATFORM_ADMIN_HTTP_LISTEN): one aiohttp server beside the gRPC port.

listener.py starts and stops it and applies what every route shares (security headers, the
dev-mode Host check, errors as JSON); auth.py authenticates and authorizes a request with
the same authorizer and policy as gRPC; json_errors.py maps domain errors to HTTP status + JSON.
Features add routes through ``App.http_routes`` (a list of registration functions).
"""
