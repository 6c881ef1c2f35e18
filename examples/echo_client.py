"""The lecture notes' first socket program: a TCP echo client.

Usage: python echo_client.py [HOST [PORT]]  (default 127.0.0.1 7)
"""

import socket
import sys

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 7

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # create a TCP socket object
s.connect((host, port))  # connect to echo server

msg = "Hello, 대한민국!"
n = s.send(msg.encode("utf-8"))  # send in bytes or bytearray type
print(n)

reply = s.recv(1024)
print(type(reply))
print(reply.decode("utf-8"))

s.close()
