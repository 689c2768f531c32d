"""Request handlers, one module per area; `HANDLERS` maps command names to them."""

from openhosting.api.handlers import account, drive_images, drives, events, resources, servers
from openhosting.api.routes import Handler

HANDLERS: dict[str, Handler] = {
    "account.info": account.info,
    "events.stream": events.stream,
    "drives.list": drives.list_drives,
    "drives.info_all": drives.info_all,
    "drives.info": drives.info,
    "drives.create": drives.create,
    "drives.set": drives.set_drive,
    "drives.destroy": drives.destroy,
    "drives.read": drives.read,
    "drives.write": drives.write,
    "drives.hash": drives.hash_range,
    "drives.image": drive_images.image,
    "drives.list_standard": drive_images.list_standard,
    "drives.info_standard": drive_images.info_standard,
    "servers.list": servers.list_servers,
    "servers.info_all": servers.info_all,
    "servers.info": servers.info,
    "servers.create": servers.create,
    "servers.create_stopped": servers.create_stopped,
    "servers.set": servers.set_server,
    "servers.start": servers.start,
    "servers.stop": servers.stop,
    "servers.shutdown": servers.shutdown,
    "servers.reset": servers.reset,
    "servers.destroy": servers.destroy,
    "servers.log": servers.serial_log,
    "resources.list": resources.list_resources,
    "resources.info_all": resources.info_all,
    "resources.info": resources.info,
    "resources.create": resources.create,
    "resources.set": resources.set_resource,
    "resources.destroy": resources.destroy,
}
