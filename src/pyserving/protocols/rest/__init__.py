"""REST on --rest_api_port: TF Serving's REST API over aiohttp (``service``), load shedding at the
connection (``gate``), read timeouts (``timeouts``), the status page and the OpenAPI document."""
