//! The pyghmi driver the end-to-end tests and the soak run: pyghmi is a Python library
//! (OpenStack Ironic's IPMI client), so a short script drives it.

/// `python3 -c PYGHMI_SCRIPT IP PORT ACTION...` as admin/password, one `Command` (RMCP+,
/// pyghmi's own suite choice), no keep-alive, an explicit logout. Actions: `get_power`,
/// `set_power=on|off|...` (waits for the new state), `set_bootdev=DEV,PERSIST,UEFI` (0 or
/// 1 each), `get_bootdev`; each prints one line.
pub const PYGHMI_SCRIPT: &str = r#"
import sys
from pyghmi.ipmi import command
ip, port = sys.argv[1], int(sys.argv[2])
c = command.Command(bmc=ip, userid='admin', password='password', port=port, keepalive=False)
for a in sys.argv[3:]:
    if a == 'get_power':
        print('power', c.get_power()['powerstate'])
    elif a.startswith('set_power='):
        print('set_power', c.set_power(a.split('=', 1)[1], wait=True)['powerstate'])
    elif a.startswith('set_bootdev='):
        dev, persist, uefi = a.split('=', 1)[1].split(',')
        c.set_bootdev(dev, persist=persist == '1', uefiboot=uefi == '1')
        print('set_bootdev', dev)
    elif a == 'get_bootdev':
        r = c.get_bootdev()
        print('bootdev', r['bootdev'], int(bool(r.get('persistent'))), int(bool(r.get('uefimode'))))
    sys.stdout.flush()
c.ipmi_session.logout()
"#;
