"""elastic/adapters/balancer.py, the pure parts: nginx.conf rendered from fixed inputs
(compared with the text written here), the access log parsed from captured lines, and the
incremental LogReader on a temporary file. tests/system/test_balancer.py runs the real nginx."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from elastic.adapters.balancer import (
    LOG_FORMAT,
    LOG_FORMAT_NAME,
    LogReader,
    Nginx,
    Request,
    nginx_conf,
    parse_log,
    parse_stub_status,
)

DIR = Path("/var/lib/elastic/balancer/web")

WITH_BACKENDS = r"""# elastic balancer, generation 7: rendered by elastic, do not edit
daemon on;
master_process on;
worker_processes 1;
pid /var/lib/elastic/balancer/web/nginx.pid;
error_log /var/lib/elastic/balancer/web/error.log notice;
# on a reload or a graceful stop, old workers finish their open requests, for so long
worker_shutdown_timeout 30s;

events {
    worker_connections 1024;
}

http {
    log_format elastic
        '$msec\t$upstream_addr\t$status\t'
        '$request_time\t$request_method\t$request_uri';
    # unbuffered: the controller reads it every second
    access_log /var/lib/elastic/balancer/web/access.log elastic;

    client_body_temp_path /var/lib/elastic/balancer/web/tmp/client_body;
    proxy_temp_path /var/lib/elastic/balancer/web/tmp/proxy;
    fastcgi_temp_path /var/lib/elastic/balancer/web/tmp/fastcgi;
    uwsgi_temp_path /var/lib/elastic/balancer/web/tmp/uwsgi;
    scgi_temp_path /var/lib/elastic/balancer/web/tmp/scgi;

    default_type application/octet-stream;
    server_tokens off;
    # every response closes its connection: on a reload the old workers close idle
    # keep-alive connections at once, under clients that may be sending on them
    keepalive_timeout 0;

    upstream tier {
        # health: GET /healthz on each server, checked by the controller
        server 10.77.0.21:8080 max_fails=3 fail_timeout=5s;
        server 10.77.0.22:8080 max_fails=3 fail_timeout=5s;
        keepalive 16;
    }

    server {
        listen 10.77.0.1:80;

        location / {
            proxy_pass http://tier;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # idempotent requests only (no non_idempotent): a POST is never sent twice
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 5s;
            proxy_read_timeout 30s;
        }

        location = /.elastic/config {
            access_log off;
            default_type text/plain;
            return 200 "7\n";
        }

        location = /.elastic/status {
            access_log off;
            stub_status;
        }
    }
}
"""

WITHOUT_BACKENDS = r"""# elastic balancer, generation g-0: rendered by elastic, do not edit
daemon on;
master_process on;
worker_processes 1;
pid /var/lib/elastic/balancer/web/nginx.pid;
error_log /var/lib/elastic/balancer/web/error.log notice;
# on a reload or a graceful stop, old workers finish their open requests, for so long
worker_shutdown_timeout 2500ms;

events {
    worker_connections 1024;
}

http {
    log_format elastic
        '$msec\t$upstream_addr\t$status\t'
        '$request_time\t$request_method\t$request_uri';
    # unbuffered: the controller reads it every second
    access_log /var/lib/elastic/balancer/web/access.log elastic;

    client_body_temp_path /var/lib/elastic/balancer/web/tmp/client_body;
    proxy_temp_path /var/lib/elastic/balancer/web/tmp/proxy;
    fastcgi_temp_path /var/lib/elastic/balancer/web/tmp/fastcgi;
    uwsgi_temp_path /var/lib/elastic/balancer/web/tmp/uwsgi;
    scgi_temp_path /var/lib/elastic/balancer/web/tmp/scgi;

    default_type application/octet-stream;
    server_tokens off;
    # every response closes its connection: on a reload the old workers close idle
    # keep-alive connections at once, under clients that may be sending on them
    keepalive_timeout 0;

    server {
        listen 0.0.0.0:8080;

        location / {
            # no front-ends yet: say so (and still log the request: it is demand)
            default_type text/plain;
            return 503 "no backends\n";
        }

        location = /.elastic/config {
            access_log off;
            default_type text/plain;
            return 200 "g-0\n";
        }

        location = /.elastic/status {
            access_log off;
            stub_status;
        }
    }
}
"""


def render(**over):
    kw = {"directory": DIR, "listen": "10.77.0.1", "port": 80,
          "backends": ["10.77.0.22:8080", "10.77.0.21:8080"], "health_path": "/healthz",
          "generation": "7"}
    kw.update(over)
    return nginx_conf(**kw)


# ------------------------------------------------------------------------------ render
def test_golden_with_backends():
    assert render() == WITH_BACKENDS


def test_backends_are_a_set_order_and_duplicates_do_not_change_the_text():
    assert render(backends=["10.77.0.21:8080", "10.77.0.22:8080", "10.77.0.21:8080"]) \
        == WITH_BACKENDS


def test_golden_without_backends_answers_503_and_still_logs():
    text = render(backends=[], listen="0.0.0.0", port=8080, generation="g-0",
                  drain_timeout=2.5)
    assert text == WITHOUT_BACKENDS
    assert "upstream" not in text.replace("$upstream_addr", "")


def test_golden_with_a_user():
    expected = WITH_BACKENDS.replace("worker_processes 1;\n",
                                     "worker_processes 1;\nuser www-data;\n")
    assert render(user="www-data") == expected
    assert "user nobody nogroup;\n" in render(user="nobody nogroup")


def test_client_keepalive_is_off_unless_asked_for():
    text = render(client_keepalive=65)
    assert "    keepalive_timeout 65s;\n" in text and "keepalive_timeout 0;" not in text
    assert text.replace("    keepalive_timeout 65s;\n", "") == WITH_BACKENDS.replace(
        "    # every response closes its connection: on a reload the old workers close idle\n"
        "    # keep-alive connections at once, under clients that may be sending on them\n"
        "    keepalive_timeout 0;\n", "")


def test_the_log_format_is_the_one_named_and_nothing_comes_from_etc_nginx():
    text = render()
    _, found, rest = text.partition(f"    log_format {LOG_FORMAT_NAME}\n")
    assert found
    block = rest.split(";", 1)[0]
    assert "".join(re.findall(r"'([^']*)'", block)) == LOG_FORMAT   # nginx joins the parts
    assert f"access.log {LOG_FORMAT_NAME};" in text      # no buffer=: written at once
    assert "include" not in text and "/etc/nginx" not in text


def test_ipv6_listen_and_backends_are_bracketed():
    text = render(listen="::", backends=["[fd00::5]:80"])
    assert "listen [::]:80;" in text
    assert "server [fd00::5]:80 max_fails=3" in text


@pytest.mark.parametrize("over", [
    {"directory": Path("relative/dir")},
    {"directory": Path("/tmp/a b")},
    {"directory": Path("/tmp/$x")},
    {"listen": "1.2.3.4; evil"},
    {"port": 0},
    {"port": 70000},
    {"port": "80"},
    {"backends": ["10.0.0.1"]},
    {"backends": ["10.0.0.1:80;"]},
    {"backends": ["fd00::1:80"]},
    {"health_path": "healthz"},
    {"health_path": "/a b"},
    {"generation": ""},
    {"generation": 'x"; return 500 "'},
    {"generation": "$host"},
    {"user": "a b c"},
    {"user": "bad;"},
    {"drain_timeout": 0},
    {"client_keepalive": -1},
])
def test_values_nginx_would_read_as_syntax_are_refused(over):
    with pytest.raises(ValueError):
        render(**over)


# ------------------------------------------------------------------------------ parse_log
# Lines as nginx 1.22 wrote them with this format (tests/system/test_balancer.py makes more).
CAPTURED = (
    "1796173889.116\t10.99.7.11:80\t200\t0.002\tGET\t/\n"
    "1796173889.117\t10.99.7.12:80, 10.99.7.13:80\t200\t0.004\tGET\t/index.html\n"
    "1796173889.118\ttier\t502\t0.000\tGET\t/a%09b\\x22x?q=1\n"
    "1796173889.119\t-\t503\t0.000\tGET\t/\n"
    "1796173889.120\t10.99.7.11:80 : 10.99.7.12:80\t404\t0.010\tGET\t/missing\n"
)


def test_parse_log_on_captured_lines():
    assert parse_log(CAPTURED) == [
        Request(time=1796173889.116, upstream="10.99.7.11:80", status=200, request_time=0.002),
        # nginx retried: the last one served the response
        Request(time=1796173889.117, upstream="10.99.7.13:80", status=200, request_time=0.004),
        # no live upstream (nginx names the group), no upstream at all: nobody served it
        Request(time=1796173889.118, upstream="-", status=502, request_time=0.0),
        Request(time=1796173889.119, upstream="-", status=503, request_time=0.0),
        Request(time=1796173889.120, upstream="10.99.7.12:80", status=404, request_time=0.01),
    ]


def test_parse_log_skips_garbage_and_the_partial_last_line():
    text = (
        "garbage\n"
        "\n"
        "1.0\t10.0.0.1:80\t-\t0.001\tGET\t/\n"            # no status
        "x\t10.0.0.1:80\t200\t0.001\tGET\t/\n"            # no time
        "1.0\t10.0.0.1:80\t200\tfast\tGET\t/\n"           # no request time
        "1.0\t10.0.0.1:80\t200\t0.001\tGET\n"             # a field short
        "2.5\t10.0.0.2:80\t201\t0.003\tPOST\t/form\r\n"   # CRLF is fine
        "\xff\xfe\t\t\t\n"
        "3.0\t10.0.0.3:80\t200\t0.001\tGET\t/"             # still being written
    )
    assert parse_log(text) == [Request(2.5, "10.0.0.2:80", 201, 0.003)]
    assert parse_log("") == []
    assert parse_log("3.0\t10.0.0.3:80\t200\t0.001\tGET\t/") == []


def test_parse_stub_status():
    page = ("Active connections: 3 \nserver accepts handled requests\n 17 17 41 \n"
            "Reading: 0 Writing: 1 Waiting: 2 \n")
    assert parse_stub_status(page) == {"active": 3, "accepts": 17, "handled": 17,
                                       "requests": 41, "reading": 0, "writing": 1,
                                       "waiting": 2}
    with pytest.raises(ValueError):
        parse_stub_status("<html>nope</html>")


# ------------------------------------------------------------------------------ LogReader
def line(t: float, upstream: str = "10.0.0.1:80", status: int = 200) -> str:
    return f"{t}\t{upstream}\t{status}\t0.001\tGET\t/\n"


def times(requests: list[Request]) -> list[float]:
    return [r.time for r in requests]


def test_reader_returns_what_was_appended_since_the_last_read(tmp_path):
    path = tmp_path / "access.log"
    reader = LogReader(path)
    assert reader.read() == []                       # no file yet
    path.write_text(line(1) + line(2))
    assert times(reader.read()) == [1, 2]
    assert reader.read() == []
    with open(path, "a") as f:
        f.write(line(3))
    assert times(reader.read()) == [3]


def test_reader_keeps_a_partial_line_until_it_is_complete(tmp_path):
    path = tmp_path / "access.log"
    reader = LogReader(path)
    whole = line(4)
    path.write_text(line(3) + whole[:9])
    assert times(reader.read()) == [3]
    with open(path, "a") as f:
        f.write(whole[9:-1])
    assert reader.read() == []                       # still no newline
    with open(path, "a") as f:
        f.write("\n" + line(5))
    assert times(reader.read()) == [4, 5]


def test_reader_starts_over_after_truncation(tmp_path):
    path = tmp_path / "access.log"
    reader = LogReader(path)
    path.write_text(line(1) + line(2) + line(3))
    assert times(reader.read()) == [1, 2, 3]
    with open(path, "r+") as f:                      # copytruncate, then nginx writes on
        f.truncate(0)
        f.write(line(9) + line(10)[:5])
    assert times(reader.read()) == [9]
    with open(path, "a") as f:
        f.write(line(10)[5:])
    assert times(reader.read()) == [10]


def test_reader_follows_a_replaced_file(tmp_path):
    path = tmp_path / "access.log"
    reader = LogReader(path)
    path.write_text(line(1) + line(2) + line(3) + "1.5\t10.0")
    assert times(reader.read()) == [1, 2, 3]
    os.rename(path, tmp_path / "access.log.1")       # rotated
    assert reader.read() == []                        # no new file yet
    # a new, longer file: not confused with the old one by its size
    path.write_text("".join(line(t) for t in range(20, 30)))
    assert times(reader.read()) == list(range(20, 30))   # the partial line was dropped
    assert reader.read() == []


def test_start_at_end_reads_only_the_tail_and_drops_its_cut_first_line(tmp_path):
    path = tmp_path / "access.log"
    lines = [line(t) for t in range(1000, 1100)]
    path.write_text("".join(lines))
    size = len(lines[0])                              # all lines are as long
    reader = LogReader(path, start_at_end=True, tail_bytes=3 * size + 5)
    assert times(reader.read()) == [1097, 1098, 1099]     # 1096 was cut: dropped
    with open(path, "a") as f:
        f.write(line(1100))
    assert times(reader.read()) == [1100]


def test_start_at_end_keeps_a_first_line_that_starts_exactly_at_the_tail(tmp_path):
    path = tmp_path / "access.log"
    lines = [line(t) for t in range(1000, 1010)]
    path.write_text("".join(lines))
    reader = LogReader(path, start_at_end=True, tail_bytes=2 * len(lines[0]))
    assert times(reader.read()) == [1008, 1009]


def test_start_at_end_on_a_small_file_reads_all_of_it(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(line(1) + line(2))
    assert times(LogReader(path, start_at_end=True).read()) == [1, 2]


def test_start_at_end_with_a_tail_inside_one_long_line(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(line(1) + "x" * 100)
    reader = LogReader(path, start_at_end=True, tail_bytes=50)
    assert reader.read() == []
    with open(path, "a") as f:
        f.write("yyy\n" + line(2))
    assert times(reader.read()) == [2]                # the rest of the long line: dropped


# ------------------------------------------------------------------------------ Nginx
def test_running_is_none_unless_the_pid_file_names_a_live_nginx(tmp_path):
    lb = Nginx(tmp_path, binary="/nonexistent/nginx")
    assert lb.running() is None                       # no pid file
    lb.pid_file.write_text("garbage\n")
    assert lb.running() is None
    lb.pid_file.write_text(f"{os.getpid()}\n")       # alive, but python, not nginx
    assert lb.running() is None
    lb.pid_file.write_text("999999999\n")            # no such process
    assert lb.running() is None


def test_stop_when_not_running_runs_nothing(tmp_path):
    lb = Nginx(tmp_path, binary="/nonexistent/nginx")
    lb.stop()                                          # would raise CommandMissing if it ran
    lb.stop()
