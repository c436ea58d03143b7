"""The real AWS CLI, imported once and forked per command, for the tests.

Each `aws` process spends most of its time importing the CLI and reading
the service models (about 1 s of CPU on this machine) before it sends one
request; target.sh makes a few hundred calls in test_target.py. This server
imports the CLI and loads the models once, then forks for each command: the
child runs the unmodified awscli driver (botocore validates every request
against the same service models) with the caller's arguments, environment,
working directory and standard streams, passed over a Unix socket.

    python aws_cli_server.py SOCKET      serve until terminated
    python aws_cli_server.py --client SOCKET ARGS...   one `aws ARGS...`

write_wrapper() makes an `aws` executable that runs the client, for AWS_CLI.
"""

import json
import os
import signal
import socket
import struct
import sys
import traceback

# Service models the deploy target uses, loaded before forking.
SERVICES = ("cloudformation", "s3", "ssm", "sts", "route53", "cloudwatch", "elbv2", "autoscaling", "ec2", "rds")


def serve(path):
    from awscli.clidriver import create_clidriver

    # One command first: every module and data file a command needs is then loaded.
    driver = create_clidriver()
    loader = driver.session.get_component("data_loader")
    loader.list_available_services("service-2")
    for name in SERVICES:
        loader.load_service_model(name, "service-2")
    import botocore.session

    data_path = os.environ["AWS_DATA_PATH"]  # set by awscli at import
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # appears only once listening is possible
    server.listen(64)
    # Children are reaped here (not by the kernel) so their CPU time counts
    # in this process's, and the test's, resource usage.
    signal.signal(signal.SIGTERM, _reap_all_and_exit)
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        conn, _ = server.accept()
        _reap()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            rc = 255
            try:
                rc = _run_one(conn, botocore.session, loader, data_path)
            except SystemExit as e:  # argparse's usage errors, as the aws command would exit
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: B036 - reported, then the child ends with 255
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    conn.sendall(struct.pack("!i", rc))
                    os._exit(0)
        conn.close()


def _reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _reap_all_and_exit(*_):
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass
    os._exit(0)


def _run_one(conn, session_module, loader, data_path):
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(msg)
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"], AWS_DATA_PATH=data_path)
    os.chdir(request["cwd"])
    # Same models, already in memory: the session gets the warm loader.
    session_module.create_loader = lambda *_: loader
    from awscli.clidriver import create_clidriver

    rc = create_clidriver().main(request["argv"])
    return rc if isinstance(rc, int) else 255


def client(path, argv):
    msg = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        socket.send_fds(s, [msg], [0, 1, 2])
        data = s.recv(4)
    if len(data) != 4:
        sys.stderr.write("aws_cli_server: no exit status from the server\n")
        return 255
    return struct.unpack("!i", data)[0]


def write_wrapper(directory, sock):
    """An executable `aws` in directory that runs one command through sock."""
    path = os.path.join(directory, "aws")
    with open(path, "w") as f:
        # -S -E: no site-packages or PYTHON* variables to read; the client needs only the standard library.
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -S -E "{os.path.abspath(__file__)}" --client "{sock}" "$@"\n')
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[1])
