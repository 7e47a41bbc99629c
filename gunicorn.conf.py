"""gunicorn reads this file from the working directory (`gunicorn config.wsgi` in the checkout).

Access log lines (on with `--access-logfile -`) name the path, never the query string (%(U)s,
not %(r)s): a query string may carry a key or a token, and access logs travel far. The
referrer (%(f)s) is left out for the same reason: it is another page's full URL.
"""

access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)s "%(a)s"'
