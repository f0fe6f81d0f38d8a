"""Interop check against real python-socketio + kombu (not run by `cargo test`).

Start two instances of the example on one exchange, then run this script with a python that has
python-socketio (5.15.1+, with the client extra) and kombu:

    EXCHANGE=interop cargo run -p socketioxide-amqp --example cluster -- 3103 &
    EXCHANGE=interop cargo run -p socketioxide-amqp --example cluster -- 3104 &
    python adapter/tests/python/interop.py interop 3103 3104

It checks both directions: a KombuManager write-only emitter reaching socket.io clients of the Rust
servers (several args, binary, no arg, one list arg, to a sid), and a Rust broadcast reaching a
python KombuManager listener in python's format.
"""
import logging
import os
import sys
import threading
import time

import socketio

URL = os.environ.get('AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672//')
exchange, port1, port2 = sys.argv[1], sys.argv[2], sys.argv[3]

seen = []


class Recorder(socketio.KombuManager):
    """A python server's queue listener that records instead of delivering."""

    def _handle_emit(self, message):
        seen.append(message)


class FakeServer:
    logger = logging.getLogger('fake')
    async_mode = 'threading'
    packet_class = socketio.packet.Packet

    def start_background_task(self, target, *args, **kwargs):
        t = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
        t.start()
        return t

    def sleep(self, seconds):
        time.sleep(seconds)


listener = Recorder(URL, channel=exchange)
listener.set_server(FakeServer())
listener.initialize()

got1, got2 = [], []
c1, c2 = socketio.Client(), socketio.Client()
c1.on('*', lambda ev, *args: got1.append((ev, args)))
c2.on('*', lambda ev, *args: got2.append((ev, args)))
c1.connect(f'http://127.0.0.1:{port1}', transports=['websocket'])
c2.connect(f'http://127.0.0.1:{port2}', transports=['websocket'])
time.sleep(0.5)

emitter = socketio.KombuManager(URL, channel=exchange, write_only=True)
emitter.emit('multi', ('a', 2, None), namespace='/')
emitter.emit('bin', (b'\x01\x02', 'x', {'k': b'zz'}), namespace='/', room=c2.get_sid('/'))
emitter.emit('none', None, namespace='/')
emitter.emit('list1', [1, 2], namespace='/')
c1.emit('message', {'k': 'rust broadcast'})

deadline = time.time() + 10
want1 = [('multi', ('a', 2, None)), ('none', ()), ('list1', ([1, 2],))]
want2 = [('multi', ('a', 2, None)), ('bin', (b'\x01\x02', 'x', {'k': b'zz'})), ('none', ()),
         ('list1', ([1, 2],)), ('message', ({'k': 'rust broadcast'},))]
while time.time() < deadline and (len(got1) < len(want1) or len(got2) < len(want2)
                                   or not any(m['event'] == 'message' for m in seen)):
    time.sleep(0.05)
c1.disconnect()
c2.disconnect()

assert got1 == want1, got1
assert sorted(got2, key=repr) == sorted(want2, key=repr), got2
rust = [m for m in seen if m['event'] == 'message']
assert rust and rust[0]['data'] == [{'k': 'rust broadcast'}], seen
print('interop ok')
