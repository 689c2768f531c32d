"""Request handlers, one module per area; `HANDLERS` maps command names to them."""

from openhosting.api.handlers import drives
from openhosting.api.routes import Handler

HANDLERS: dict[str, Handler] = {
    "drives.list": drives.list_drives,
    "drives.info_all": drives.info_all,
    "drives.info": drives.info,
    "drives.create": drives.create,
    "drives.set": drives.set_drive,
    "drives.destroy": drives.destroy,
    "drives.read": drives.read,
    "drives.write": drives.write,
}
