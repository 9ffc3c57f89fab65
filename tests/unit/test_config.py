"""Unit tests for dhtd.config: defaults, DHTD_* variables, flags, and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtd.addrs import format_addr, parse_dial_addr, parse_listen_addr
from dhtd.config import (
    DEFAULT_GRPC_ADDR,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONCURRENT_RPCS,
    MAX_DEV_PEERS,
    MAX_MAX_CONCURRENT_RPCS,
    Config,
    ConfigError,
    load,
)
from dhtd.ids import peer_id_to_str

PEER_A = peer_id_to_str(b"\x00\x24\x08\x01\x12\x20" + bytes(range(32)))
PEER_B = peer_id_to_str(b"\x12\x20" + bytes(range(32, 64)))
BOOT_A = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}"
BOOT_B = f"/ip6/::1/tcp/4002/p2p/{PEER_B}"
BASE_ENV = {"XDG_DATA_HOME": "/xdg"}


def problems_of(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(argv, BASE_ENV if environ is None else environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_defaults() -> None:
    config = load([], BASE_ENV)
    assert config == Config(
        grpc_host="127.0.0.1",
        grpc_port=50051,
        listen=(parse_listen_addr(DEFAULT_LISTEN),),
        bootstrap=(),
        data_dir=Path("/xdg/dhtd"),
        server_mode=True,
        protocol_prefix="/ipfs",
        namespaces=(),
        query_timeout=60.0,  # the issue's --query-timeout default, written out
        log_level="info",
        log_format="json",
        dev_peers=0,
        shutdown_grace=10.0,
        metrics_addr=("127.0.0.1", 9464),
        reprovide_interval=22 * 3600.0,  # go-libp2p / Kubo
        refresh_interval=600.0,  # go-libp2p-kad-dht
        conn_low_water=128,
        conn_high_water=192,
        conn_grace=20.0,
    )
    assert config.grpc_addr == DEFAULT_GRPC_ADDR
    assert config.protocol_id == "/ipfs/kad/1.0.0"
    assert config.max_concurrent_rpcs == DEFAULT_MAX_CONCURRENT_RPCS == 256


def test_default_data_dir_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load([], {}).data_dir == tmp_path / ".local" / "share" / "dhtd"


def test_does_not_read_the_process_environment_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DHTD_MODE", "bogus")
    assert load([], BASE_ENV).server_mode is True
    with pytest.raises(ConfigError):
        load([])  # environ=None reads os.environ


FULL_ENV = {
    "DHTD_GRPC_ADDR": "[::1]:6000",
    "DHTD_LISTEN": "/ip4/127.0.0.1/tcp/5001, /ip6/::/tcp/5002",
    "DHTD_BOOTSTRAP": f"{BOOT_A},{BOOT_B}",
    "DHTD_DATA_DIR": "/env/data",
    "DHTD_MODE": "CLIENT",
    "DHTD_PROTOCOL_PREFIX": "/private/",
    "DHTD_NAMESPACE": "app, /other/ ,app",
    "DHTD_QUERY_TIMEOUT": "12.5",
    "DHTD_LOG_LEVEL": "Debug",
    "DHTD_LOG_FORMAT": "text",
    "DHTD_DEV_PEERS": "3",
    "DHTD_SHUTDOWN_GRACE": "0",
    "DHTD_METRICS_ADDR": "off",
    "DHTD_REPROVIDE_INTERVAL": "3600",
    "DHTD_MAX_CONCURRENT_RPCS": "32",
}


def test_every_flag_reads_its_environment_variable() -> None:
    config = load([], FULL_ENV)
    assert config == Config(
        grpc_host="::1",
        grpc_port=6000,
        listen=(parse_listen_addr("/ip4/127.0.0.1/tcp/5001"),
                parse_listen_addr("/ip6/::/tcp/5002")),
        bootstrap=(parse_dial_addr(BOOT_A), parse_dial_addr(BOOT_B)),
        data_dir=Path("/env/data"),
        server_mode=False,
        protocol_prefix="/private",
        namespaces=("app", "other"),
        query_timeout=12.5,
        log_level="debug",
        log_format="text",
        dev_peers=3,
        shutdown_grace=0.0,
        metrics_addr=None,
        reprovide_interval=3600.0,
        max_concurrent_rpcs=32,
    )
    assert config.grpc_addr == "[::1]:6000"
    assert config.protocol_id == "/private/kad/1.0.0"


def test_list_variables_accept_newlines_and_skip_empty_entries() -> None:
    config = load([], {**BASE_ENV, "DHTD_NAMESPACE": "a,\n b,,c\n", "DHTD_BOOTSTRAP": ""})
    assert config.namespaces == ("a", "b", "c")
    assert config.bootstrap == ()


def test_flags_beat_environment_variables() -> None:
    argv = [
        "--grpc-addr", "0.0.0.0:7000",
        "--listen", "/ip4/0.0.0.0/tcp/6001",
        "--bootstrap", BOOT_B,
        "--data-dir", "/flag/data",
        "--mode", "server",
        "--protocol-prefix", "/flagged",
        "--namespace", "flagns",
        "--query-timeout", "30",
        "--log-level", "error",
        "--log-format", "json",
        "--dev-peers", "1",
        "--shutdown-grace", "2",
        "--metrics-addr", "0.0.0.0:9000",
        "--reprovide-interval", "60",
        "--max-concurrent-rpcs", "7",
    ]
    config = load(argv, FULL_ENV)
    assert config == Config(
        grpc_host="0.0.0.0",
        grpc_port=7000,
        listen=(parse_listen_addr("/ip4/0.0.0.0/tcp/6001"),),
        bootstrap=(parse_dial_addr(BOOT_B),),
        data_dir=Path("/flag/data"),
        server_mode=True,
        protocol_prefix="/flagged",
        namespaces=("flagns",),
        query_timeout=30.0,
        log_level="error",
        log_format="json",
        dev_peers=1,
        shutdown_grace=2.0,
        metrics_addr=("0.0.0.0", 9000),
        reprovide_interval=60.0,
        max_concurrent_rpcs=7,
    )


def test_repeatable_flags_collect_every_value() -> None:
    config = load(["--listen", "/ip4/0.0.0.0/tcp/1", "--listen", "/ip4/0.0.0.0/tcp/2",
                   "--bootstrap", BOOT_A, "--bootstrap", BOOT_B,
                   "--namespace", "x", "--namespace", "y"], BASE_ENV)
    assert config.listen == (parse_listen_addr("/ip4/0.0.0.0/tcp/1"),
                             parse_listen_addr("/ip4/0.0.0.0/tcp/2"))
    assert [p for p, _ in config.bootstrap] == [parse_dial_addr(BOOT_A)[0],
                                                parse_dial_addr(BOOT_B)[0]]
    assert config.namespaces == ("x", "y")


def test_data_dir_expands_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load(["--data-dir", "~/keys"], BASE_ENV).data_dir == tmp_path / "keys"


@pytest.mark.parametrize(
    ("prefix", "protocol_id"),
    [("/ipfs", "/ipfs/kad/1.0.0"), ("/lan/", "/lan/kad/1.0.0"), (" /a/b ", "/a/b/kad/1.0.0")],
)
def test_protocol_id_comes_from_the_prefix(prefix: str, protocol_id: str) -> None:
    assert load(["--protocol-prefix", prefix], BASE_ENV).protocol_id == protocol_id


def test_every_bad_setting_gets_its_own_line() -> None:
    problems = problems_of([
        "--mode", "peer",
        "--grpc-addr", "localhost",
        "--listen", "/ip4/0.0.0.0/udp/4001",
        "--listen", "not-a-multiaddr",
        "--bootstrap", "/ip4/10.0.0.1/tcp/4001",
        "--namespace", "bad ns",
        "--namespace", "pk",
        "--namespace", "/ipns/",
        "--query-timeout", "0",
        "--protocol-prefix", "ipfs",
        "--log-level", "loud",
        "--log-format", "xml",
        "--dev-peers", "1.5",
        "--shutdown-grace", "soon",
        "--metrics-addr", "everywhere",
    ])
    expected_starts = [
        "--grpc-addr: 'localhost'",
        "--listen: '/ip4/0.0.0.0/udp/4001'",
        "--listen: 'not-a-multiaddr'",
        "--bootstrap: '/ip4/10.0.0.1/tcp/4001': must end in /p2p/<peer id>",
        "--metrics-addr: 'everywhere' is not host:port",
        "--mode: 'peer'",
        "--protocol-prefix: 'ipfs'",
        "--namespace: 'bad ns'",
        "--namespace: /pk/ is built in",
        "--namespace: /ipns/ is built in",
        "--query-timeout: 0 is outside",
        "--shutdown-grace: 'soon' is not a number",
        "--dev-peers: '1.5' is not a whole number",
        "--log-level: 'loud'",
        "--log-format: 'xml'",
    ]
    assert len(problems) == len(expected_starts), problems
    for line, start in zip(problems, expected_starts, strict=True):
        assert line.startswith(start), (line, start)
        assert "\n" not in line


def test_bad_environment_values_are_reported_like_flags() -> None:
    problems = problems_of([], {
        "DHTD_MODE": "both",
        "DHTD_GRPC_ADDR": "host:99999",
        "DHTD_BOOTSTRAP": f"{BOOT_A},/ip4/1.2.3.4/tcp/1",
        "DHTD_NAMESPACE": "ok,pk",
        "DHTD_QUERY_TIMEOUT": "-1",
    })
    assert len(problems) == 5, problems
    assert problems[0].startswith("--grpc-addr: 'host:99999'")
    assert problems[1].startswith("--bootstrap: '/ip4/1.2.3.4/tcp/1'")
    assert problems[2].startswith("--mode: 'both'")
    assert problems[3].startswith("--namespace: /pk/")
    assert problems[4].startswith("--query-timeout: -1 is outside")


@pytest.mark.parametrize("addr", ["", ":80", "host:", "host:http", "host:65536", "[::1]"])
def test_bad_grpc_addr(addr: str) -> None:
    assert problems_of(["--grpc-addr", addr]) == [f"--grpc-addr: {addr!r} is not host:port"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--query-timeout", "nan"),
        ("--query-timeout", "inf"),
        ("--query-timeout", "3601"),
        ("--shutdown-grace", "-1"),
        ("--shutdown-grace", "nan"),
        ("--dev-peers", str(MAX_DEV_PEERS + 1)),
        ("--dev-peers", "-1"),
        ("--dev-peers", "nan"),
        ("--dev-peers", "inf"),
        ("--dev-peers", "many"),
        ("--dev-peers", "2.5"),
        ("--max-concurrent-rpcs", "0"),
        ("--max-concurrent-rpcs", "-1"),
        ("--max-concurrent-rpcs", "-1.5"),
        ("--max-concurrent-rpcs", "1.5"),
        ("--max-concurrent-rpcs", str(MAX_MAX_CONCURRENT_RPCS + 1)),
        ("--max-concurrent-rpcs", "nan"),
        ("--max-concurrent-rpcs", "inf"),
        ("--max-concurrent-rpcs", "lots"),
        ("--max-concurrent-rpcs", ""),
    ],
)
def test_bad_numbers_give_exactly_one_line(flag: str, value: str) -> None:
    problems = problems_of([flag, value])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{flag}: ")


@pytest.mark.parametrize(
    ("flag", "value", "attr", "expected"),
    [
        ("--query-timeout", "0.001", "query_timeout", 0.001),
        ("--query-timeout", "3600", "query_timeout", 3600.0),
        ("--dev-peers", str(MAX_DEV_PEERS), "dev_peers", MAX_DEV_PEERS),
        ("--dev-peers", "2.0", "dev_peers", 2),
        ("--shutdown-grace", "600", "shutdown_grace", 600.0),
        ("--max-concurrent-rpcs", "1", "max_concurrent_rpcs", 1),
        ("--max-concurrent-rpcs", "4.0", "max_concurrent_rpcs", 4),
        ("--max-concurrent-rpcs", str(MAX_MAX_CONCURRENT_RPCS), "max_concurrent_rpcs",
         MAX_MAX_CONCURRENT_RPCS),
        ("--grpc-addr", "example.org:0", "grpc_port", 0),
        ("--grpc-addr", "[2001:db8::1]:443", "grpc_host", "2001:db8::1"),
    ],
)
def test_edge_values_are_accepted(flag: str, value: str, attr: str, expected: object) -> None:
    assert getattr(load([flag, value], BASE_ENV), attr) == expected


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("0", "--max-concurrent-rpcs: 0 is outside 1..100000"),
        ("2.5", "--max-concurrent-rpcs: '2.5' is not a whole number"),
        ("many", "--max-concurrent-rpcs: 'many' is not a number"),
    ],
)
def test_max_concurrent_rpcs_problems_read_as_one_line(value: str, line: str) -> None:
    assert problems_of(["--max-concurrent-rpcs", value]) == [line]
    assert problems_of([], {**BASE_ENV, "DHTD_MAX_CONCURRENT_RPCS": value}) == [line]


@pytest.mark.parametrize(
    ("argv", "lines"),
    [
        (["--conn-low-water", "300"],
         ["--conn-low-water (300) is above --conn-high-water (192)"]),
        (["--conn-high-water", "1.5"], ["--conn-high-water: '1.5' is not a whole number"]),
        (["--conn-grace", "-1"], ["--conn-grace: -1 is outside 0..3600"]),
        (["--refresh-interval", "0"], ["--refresh-interval: 0 is outside 1..86400"]),
    ],
)
def test_maintenance_and_connection_problems_read_as_one_line(
    argv: list[str], lines: list[str]
) -> None:
    assert problems_of(argv) == lines


def test_maintenance_and_connection_flags_and_variables() -> None:
    config = load(["--conn-low-water", "10", "--conn-high-water", "20", "--conn-grace", "0",
                   "--refresh-interval", "30"], BASE_ENV)
    assert (config.conn_low_water, config.conn_high_water) == (10, 20)
    assert (config.conn_grace, config.refresh_interval) == (0.0, 30.0)
    env = {**BASE_ENV, "DHTD_CONN_LOW_WATER": "5", "DHTD_CONN_HIGH_WATER": "6",
           "DHTD_CONN_GRACE": "1", "DHTD_REFRESH_INTERVAL": "2"}
    config = load([], env)
    assert (config.conn_low_water, config.conn_high_water) == (5, 6)
    assert (config.conn_grace, config.refresh_interval) == (1.0, 2.0)


def test_block_sources_from_flags_or_a_variable(tmp_path: Path) -> None:
    config = load(["--block-source", f"file://{tmp_path}", "--block-source",
                   "http://127.0.0.1:8080", "--block-source-timeout", "2.5"], BASE_ENV)
    assert config.block_sources == (f"file://{tmp_path}", "http://127.0.0.1:8080")
    assert config.block_source_timeout == 2.5
    env = {**BASE_ENV, "DHTD_BLOCK_SOURCE": f"file://{tmp_path}, https://gw.example",
           "DHTD_BLOCK_SOURCE_TIMEOUT": "7"}
    config = load([], env)
    assert config.block_sources == (f"file://{tmp_path}", "https://gw.example")
    assert config.block_source_timeout == 7.0
    assert load([], BASE_ENV).block_sources == ()
    assert load([], BASE_ENV).block_source_timeout == 30.0


def test_bad_block_sources_get_one_line_each(tmp_path: Path) -> None:
    assert problems_of(["--block-source", f"file://{tmp_path}/missing",
                        "--block-source", "ftp://x", "--block-source-timeout", "0"]) == [
        f"--block-source: 'file://{tmp_path}/missing': {tmp_path}/missing is not a directory",
        "--block-source: 'ftp://x': a block source is file:///dir (CAR files) or "
        "http(s)://host[:port] (a trustless gateway)",
        "--block-source-timeout: 0 is outside 0.1..3600",
    ]
    many = [arg for _ in range(17) for arg in ("--block-source", "http://h")]
    assert problems_of(many) == ["--block-source: 17 given, at most 16"]


def test_provide_batch_min_from_a_flag_or_a_variable() -> None:
    assert load([], BASE_ENV).provide_batch_min == 32
    assert load(["--provide-batch-min", "0"], BASE_ENV).provide_batch_min == 0
    assert load([], {**BASE_ENV, "DHTD_PROVIDE_BATCH_MIN": "500"}).provide_batch_min == 500
    assert problems_of(["--provide-batch-min", "-1"]) == [
        "--provide-batch-min: -1 is outside 0..1e+06"]


def test_min_holders_from_a_flag_or_a_variable() -> None:
    assert load([], BASE_ENV).min_holders == 5
    assert load(["--min-holders", "20"], BASE_ENV).min_holders == 20
    assert load([], {**BASE_ENV, "DHTD_MIN_HOLDERS": "1"}).min_holders == 1
    assert problems_of(["--min-holders", "0"]) == ["--min-holders: 0 is outside 1..20"]
    assert problems_of(["--min-holders", "21"]) == ["--min-holders: 21 is outside 1..20"]


def test_announce_addresses_from_flags_or_variables() -> None:
    config = load(["--announce", "/dns4/dht.example.com/tcp/4001",
                   "--announce", "/ip4/203.0.113.7/tcp/4001",
                   "--announce-append", "/dns4/gw.example.com/tcp/443/https",
                   "--announce-append", "/ip4/203.0.113.7/tcp/8080/http",
                   "--announce-append", "/dns/gw.example.com/tcp/443/tls/http"], BASE_ENV)
    assert [format_addr(a) for a in config.announce] == [
        "/dns4/dht.example.com/tcp/4001", "/ip4/203.0.113.7/tcp/4001"]
    assert [format_addr(a) for a in config.announce_append] == [
        "/dns4/gw.example.com/tcp/443/https", "/ip4/203.0.113.7/tcp/8080/http",
        "/dns/gw.example.com/tcp/443/tls/http"]
    env = {**BASE_ENV, "DHTD_ANNOUNCE": "/dns6/dht.example.com/tcp/4001",
           "DHTD_ANNOUNCE_APPEND": "/ip6/2001:db8::1/tcp/443/https, /ip4/1.2.3.4/tcp/1"}
    config = load([], env)
    assert [format_addr(a) for a in config.announce] == ["/dns6/dht.example.com/tcp/4001"]
    assert [format_addr(a) for a in config.announce_append] == [
        "/ip6/2001:db8::1/tcp/443/https", "/ip4/1.2.3.4/tcp/1"]
    assert load([], BASE_ENV).announce == () == load([], BASE_ENV).announce_append
    # The same address twice is announced once.
    twice = load(["--announce-append", "/ip4/1.2.3.4/tcp/1"] * 2, BASE_ENV)
    assert len(twice.announce_append) == 1


def test_bad_announce_addresses_get_one_line_each() -> None:
    peer = BOOT_A.rsplit("/", 1)[1]
    problems = problems_of([
        "--announce", "/tcp/4001",
        "--announce", "/ip4/1.2.3.4",
        "--announce-append", f"/ip4/1.2.3.4/tcp/1/p2p/{peer}",
        "--announce-append", "https://gw.example.com",
    ])
    assert problems[:3] == [
        "--announce: '/tcp/4001': must start with /ip4, /ip6, /dns, /dns4 or /dns6",
        "--announce: '/ip4/1.2.3.4': needs a transport after the host, e.g. /tcp/4001 or "
        "/tcp/443/https",
        f"--announce-append: '/ip4/1.2.3.4/tcp/1/p2p/{peer}': must not contain /p2p/ "
        "(this node's ID is implied)",
    ]
    assert problems[3].startswith("--announce-append: 'https://gw.example.com': not a multiaddr")
    assert len(problems) == 4
    many = [arg for i in range(17) for arg in ("--announce-append", f"/ip4/1.2.3.4/tcp/{i + 1}")]
    assert problems_of(many) == [
        "--announce, --announce-append: 17 addresses, at most 16"]
