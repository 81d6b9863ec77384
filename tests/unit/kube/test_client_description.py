"""What ``auditor check`` prints and ``run --discovery`` logs about the API server: never the
``user:password@`` a kubeconfig's server URL may carry."""

from __future__ import annotations

from pathlib import Path

from pipeline.kube.client import connect

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- cluster: {server: "https://admin:kubepass@127.0.0.1:6443", insecure-skip-tls-verify: true}
  name: c
contexts:
- context: {cluster: c, user: u}
  name: ctx
current-context: ctx
users:
- name: u
  user: {token: not-a-real-token}
"""


async def test_description_has_no_credentials_from_the_server_url(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    client = await connect(str(path), environ={})
    try:
        assert client.description == f"kubeconfig {path} (server https://127.0.0.1:6443)"
        assert "kubepass" not in client.description and "admin" not in client.description
    finally:
        await client.close()
