"""The fleet file's cluster keys: [cluster] storage, and per machine host, host_labels,
spread; bad values are refused naming the key and what would be right."""

import pytest

from warden.errors import SpecError
from warden.spec.fleet import parse

HEAD = '[[owner]]\nname = "alice"\n'


def test_cluster_keys_are_read() -> None:
    f = parse(
        '[cluster]\nstorage = "/srv/warden"\n' + HEAD + '[[machine]]\nname = "s1"\n'
        'owner = "alice"\nhost = "h2"\nhost_labels = ["zone=eu", "disk=ssd"]\n'
        'spread = "sensors"\n'
    )
    assert f.cluster.storage == "/srv/warden"
    m = f.machines[0]
    assert (m.host, m.host_labels, m.spread) == ("h2", ("zone=eu", "disk=ssd"), "sensors")


@pytest.mark.parametrize(
    "text, says",
    [
        ('[cluster]\nstorage = "srv"\n', "storage = 'srv': expected an absolute path"),
        ('[cluster]\nstorag = "/srv"\n', "did you mean 'storage'"),
        ('[[machine]]\nname = "m"\nowner = "alice"\nhost_labels = ["zone"]\n', "not a label"),
        ('[[machine]]\nname = "m"\nowner = "alice"\nhost = "H 2"\n', "expected a host name"),
    ],
)
def test_bad_cluster_keys_are_refused(text: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        parse(HEAD + text if text.startswith("[[") else text + HEAD, "f.toml")
    assert says in str(e.value)
