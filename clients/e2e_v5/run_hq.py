"""Starts vantage6 HQ 5.0.3 without uWSGI, the way its image's server.sh does
in two steps: the one-shot database initialisation (`vantage6.hq.init_db`:
default roles, root organisation and user, the user's Keycloak id) and then
the app on Flask-SocketIO's own server (gevent, after the gevent_uwsgi attempt
fails), with the RabbitMQ message queue from the configuration.

usage: python run_hq.py CONFIG_FILE PORT
"""
import sys

# vantage6.hq monkey-patches with gevent when it is imported.
from vantage6.hq import run_hq


def main() -> None:
    config, port = sys.argv[1], int(sys.argv[2])
    hq = run_hq(config, system_folders=False)
    # what `python -m vantage6.hq.init_db CONFIG` does, on the same app
    hq.ensure_db_initialized()
    print("HQ database initialized", flush=True)
    hq.socketio.run(hq.app, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
