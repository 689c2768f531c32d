"""Small helpers for API tests that use drives."""

from aiohttp.test_utils import TestClient

from openhosting.wire.text import parse_properties


async def create_drive(
    client: TestClient, auth: dict[str, str], size: int | str, cipher: str = "none", **keys: str
) -> dict[str, str]:
    body = f"name test\nsize {size}\nencryption:cipher {cipher}\n" + "".join(
        f"{key.replace('_', ':')} {value}\n" for key, value in keys.items()
    )
    response = await client.post("/drives/create", data=body, headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


async def drive_info(client: TestClient, auth: dict[str, str], drive: str) -> dict[str, str]:
    response = await client.get(f"/drives/{drive}/info", headers=auth)
    assert response.status == 200, await response.text()
    return parse_properties(await response.text())


async def read_bytes(client: TestClient, auth: dict[str, str], path: str) -> bytes:
    response = await client.get(path, headers=auth)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/octet-stream"
    return await response.read()


async def drive_holding(
    client: TestClient, auth: dict[str, str], data: bytes, cipher: str = "none"
) -> str:
    """A new drive of exactly `data`'s size holding it: its UUID."""
    drive = (await create_drive(client, auth, len(data), cipher))["drive"]
    response = await client.post(f"/drives/{drive}/write", data=data, headers=auth)
    assert response.status == 204, await response.text()
    return drive
