"""gunicorn reads this file from the working directory (`gunicorn config.wsgi` in the checkout).

Access log lines (on with `--access-logfile -`) name the path, never the query string (%(U)s,
not %(r)s): a query string may carry a key or a token, and access logs travel far. The
referrer (%(f)s) is left out for the same reason: it is another page's full URL.
"""

access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)s "%(a)s"'

# Request bodies in large pieces (see config/gunicorn_body.py for why and the numbers).
from config import gunicorn_body  # noqa: E402

gunicorn_body.install()
