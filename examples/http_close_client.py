"""The lecture notes' non-persistent HTTP GET: `Connection: close`, recv until b''.

Usage: python http_close_client.py URL   (e.g. http://127.0.0.1:8000/test/index.html)
"""

import socket
import sys
from urllib.parse import urlparse

template = "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/test/index.html"
r = urlparse(url)
host, port = r.hostname, r.port if r.port else 80
path = r.path + "?" + r.query if r.query else r.path
request = template.format(path=path, host=host)
print(request.encode())

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.connect((host, port))
sock.send(request.encode("utf-8"))

chunks = []
while True:
    chunk = sock.recv(4096)
    if chunk == b"":
        break  # server closes
    chunks.append(chunk)
sock.close()

response = b"".join(chunks)
eoh = response.find(b"\r\n\r\n")
headers, contents = response[:eoh], response[eoh + 4 :]
print(headers.decode())
print(contents.decode())
