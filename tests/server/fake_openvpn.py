"""A stand-in for OpenVPN's management interface on a unix socket: the slice of the
protocol the server uses (`status 3`, `kill CN`), or, with hang=True, a socket that accepts
and never answers."""
from __future__ import annotations

import socket
import threading
from pathlib import Path


class FakeOpenVPNManagement:
    def __init__(self, path: Path, names: list[str], hang: bool = False) -> None:
        self.path, self.names, self.hang = path, list(names), hang
        self.killed: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(1000):  # bounded: a test makes a handful of connections
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self._answer(conn)
                except OSError:
                    pass

    def _answer(self, conn: socket.socket) -> None:
        if self.hang:
            conn.recv(100)  # hold the connection until the client gives up
            return
        conn.sendall(b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n")
        reader = conn.makefile("rb")
        command = reader.readline().decode().strip()
        if command == "status 3":
            lines = ["TITLE\tOpenVPN 2.6", "TIME\t2025-01-01 00:00:00\t1735689600",
                     "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address"]
            lines += [f"CLIENT_LIST\t{n}\t172.18.0.{i + 2}:1194\t10.76.0.{i + 2}" for i, n in enumerate(self.names)]
            lines += [">BYTECOUNT:1,2", "GLOBAL_STATS\tMax bcast/mcast queue length\t0", "END"]
        elif command.startswith("kill "):
            cn = command[5:]
            if cn in self.names:
                self.names.remove(cn)
                self.killed.append(cn)
                lines = [f"SUCCESS: common name '{cn}' found, 1 client(s) killed"]
            else:
                lines = [f"ERROR: common name '{cn}' not found"]
        else:
            lines = [f"ERROR: unknown command [{command}]"]
        conn.sendall("".join(f"{line}\r\n" for line in lines).encode())
        reader.readline()  # quit

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
