"""The local Hub server as a hostile client meets it: private repos stay private without the token, a stalled
client cannot hang the others, ranges outside a file get 416, malformed requests get 400 (never a dropped
connection)."""
import http.client
import json
import socket
import threading
import time

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from timm_mlit.testing.local_hub import LocalHubServer

TOKEN = 'hf_local_test_token'


@pytest.fixture
def hub():
    with LocalHubServer(token=TOKEN) as server:
        yield server


def _upload(hub, repo, files, private=False):
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo(repo, private=private)
    api.create_commit(repo, [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()],
                      commit_message='test')


def _request(hub, method, path, headers=None, body=None, timeout=10):
    host, port = hub.server_address
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_private_repo_needs_the_token_to_be_read(hub):
    _upload(hub, 'me/secret', {'model.safetensors': b'weights'}, private=True)
    for path in ('/api/models/me/secret', '/me/secret/resolve/main/model.safetensors'):
        status, headers, _ = _request(hub, 'GET', path)
        assert status == 401 and headers['X-Error-Code'] == 'RepoNotFound', path
        status, _, _ = _request(hub, 'GET', path, {'Authorization': 'Bearer wrong'})
        assert status == 401, path
        status, _, body = _request(hub, 'GET', path, {'Authorization': f'Bearer {TOKEN}'})
        assert status == 200, path
    assert body == b'weights'
    with pytest.raises(RepositoryNotFoundError, match='private or gated'):
        HfApi(endpoint=hub.endpoint, token=False).model_info('me/secret')
    assert HfApi(endpoint=hub.endpoint, token=TOKEN).model_info('me/secret').private is True
    _upload(hub, 'me/open', {'a.txt': b'x'})
    assert _request(hub, 'GET', '/me/open/resolve/main/a.txt')[0] == 200  # public repos stay readable


def test_a_private_repo_without_a_server_token_is_refused():
    with LocalHubServer() as server:
        status, headers, _ = _request(server, 'POST', '/api/repos/create',
                                      {'Content-Type': 'application/json'}, json.dumps({'name': 'x', 'private': True}))
    assert status == 400 and 'no token' in headers['X-Error-Message']


def test_a_stalled_client_does_not_hang_the_others(hub):
    _upload(hub, 'me/model', {'a.txt': b'hello'})
    stalled = socket.create_connection(hub.server_address)
    try:  # promises a body it never sends, then waits, as a stalled upload would
        stalled.sendall(b'POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n'
                        b'Authorization: Bearer ' + TOKEN.encode() + b'\r\n\r\n{"name"')
        time.sleep(0.2)
        started = time.monotonic()
        results = []
        worker = threading.Thread(target=lambda: results.append(_request(hub, 'GET', '/me/model/resolve/main/a.txt')))
        worker.start()
        worker.join(timeout=5)
        assert results and results[0][0] == 200 and results[0][2] == b'hello', 'the server hung behind a stalled client'
        assert time.monotonic() - started < 5
    finally:
        stalled.close()


@pytest.mark.parametrize('range_header, status, content_range, body', [
    ('bytes=2-4', 206, 'bytes 2-4/10', b'234'),
    ('bytes=7-', 206, 'bytes 7-9/10', b'789'),
    ('bytes=-3', 206, 'bytes 7-9/10', b'789'),
    ('bytes=8-100', 206, 'bytes 8-9/10', b'89'),
    ('bytes=10-', 416, 'bytes */10', None),
    ('bytes=50-60', 416, 'bytes */10', None),
    ('bytes=-0', 416, 'bytes */10', None),
    ('bytes=5-2', 200, None, b'0123456789'),  # not a valid range: ignored
])
def test_ranges(hub, range_header, status, content_range, body):
    _upload(hub, 'me/model', {'f.bin': b'0123456789'})
    got, headers, content = _request(hub, 'GET', '/me/model/resolve/main/f.bin', {'Range': range_header})
    assert got == status
    assert headers.get('Content-Range') == content_range
    if body is not None:
        assert content == body


@pytest.mark.parametrize('path, body', [
    ('/api/repos/create', b'not json'),
    ('/api/repos/create', b'[1, 2]'),
    ('/api/repos/create', json.dumps({'name': '../../etc'}).encode()),
    ('/api/repos/create', json.dumps({'name': None}).encode()),
    ('/api/validate-yaml', json.dumps({'content': 5}).encode()),
    ('/api/models/me/model/preupload/main', json.dumps({'files': [1]}).encode()),
    ('/api/models/me/model/commit/main', b'{"key": "file", "value": {"path": "../x", "content": "a"}}'),
    ('/api/models/me/model/commit/main', b'{"key": "file", "value": {"path": "x", "content": "@@",'
                                         b' "encoding": "base64"}}'),
    ('/api/models/me/model/commit/main', b'{"key": "deletedFile", "value": {}}'),
    ('/api/models/me/model/commit/main', b'\xff\xfe'),
])
def test_malformed_requests_get_400_and_change_nothing(hub, path, body):
    _upload(hub, 'me/model', {'a.txt': b'hello'})
    before = {k: dict(v.commits) for k, v in hub.repos.items()}
    status, headers, _ = _request(hub, 'POST', path, {'Authorization': f'Bearer {TOKEN}'}, body)
    assert status == 400, headers.get('X-Error-Message')
    assert headers.get('X-Error-Message')
    assert {k: dict(v.commits) for k, v in hub.repos.items()} == before


def test_a_bad_content_length_is_refused(hub):
    status, headers, _ = _request(hub, 'POST', '/api/repos/create', {'Content-Length': str(1 << 40)}, None)
    assert status == 413
