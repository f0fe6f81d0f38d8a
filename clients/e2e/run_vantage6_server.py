"""Starts vantage6-server 4.15.2 with its own development server (gevent,
Flask-SocketIO with the RabbitMQ message queue from the configuration), the
way `v6 server start --dev` would run it outside a container.

usage: python run_vantage6_server.py CONFIG_FILE PORT
"""
import sys

# vantage6.server monkey-patches with gevent when it is imported.
from vantage6.server import run_dev_server, run_server


def main() -> None:
    config, port = sys.argv[1], int(sys.argv[2])
    app = run_server(config, system_folders=False)
    run_dev_server(app, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
