//! The agent's view of its VMs, read from the admin endpoint's `GET /vms`.

/// One line of `GET /vms`:
/// `name=vm-0 port=6230 power=on boot=pxe persistent=0 efi=1 starts=2 stops=1 resets=0
/// media=http://10.0.0.1/boot.iso booted=pxe`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub port: u16,
    /// on | off | starting | stopping
    pub power: String,
    /// none | pxe | disk | cdrom | bios
    pub boot: String,
    pub persistent: bool,
    pub efi: bool,
    /// Completed power-on, power-off and hard-reset actions.
    pub starts: u64,
    pub stops: u64,
    pub resets: u64,
    /// The image URL in the virtual CD, or `none`.
    pub media: String,
    /// The device the last boot came from: none | pxe | disk | cdrom | bios.
    pub booted: String,
}

impl Vm {
    /// Parses one line; unknown keys are ignored so the endpoint can grow.
    pub fn parse(line: &str) -> Result<Vm, String> {
        let get = |key: &str| -> Result<&str, String> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .ok_or_else(|| format!("no `{key}=` in /vms line {line:?}"))
        };
        let num = |key: &str| -> Result<u64, String> {
            get(key)?
                .parse()
                .map_err(|e| format!("{key} in {line:?}: {e}"))
        };
        let flag = |key: &str| -> Result<bool, String> {
            match get(key)? {
                "0" => Ok(false),
                "1" => Ok(true),
                v => Err(format!("{key}={v} is not 0/1 in {line:?}")),
            }
        };
        Ok(Vm {
            name: get("name")?.to_string(),
            port: num("port")? as u16,
            power: get("power")?.to_string(),
            boot: get("boot")?.to_string(),
            persistent: flag("persistent")?,
            efi: flag("efi")?,
            starts: num("starts")?,
            stops: num("stops")?,
            resets: num("resets")?,
            media: get("media")?.to_string(),
            booted: get("booted")?.to_string(),
        })
    }

    /// Parses a whole `/vms` body.
    pub fn parse_all(body: &str) -> Result<Vec<Vm>, String> {
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(Vm::parse)
            .collect()
    }

    /// Power is settled (not in a transition).
    pub fn settled(&self) -> bool {
        self.power == "on" || self.power == "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_line() {
        let vm = Vm::parse(
            "name=vm-0 port=6230 power=on boot=pxe persistent=0 efi=1 starts=2 stops=1 resets=0 \
             media=http://10.0.0.1/boot.iso booted=pxe",
        )
        .unwrap();
        assert_eq!(vm.name, "vm-0");
        assert_eq!(vm.port, 6230);
        assert_eq!(vm.power, "on");
        assert_eq!(vm.boot, "pxe");
        assert!(!vm.persistent && vm.efi);
        assert_eq!((vm.starts, vm.stops, vm.resets), (2, 1, 0));
        assert_eq!(
            (vm.media.as_str(), vm.booted.as_str()),
            ("http://10.0.0.1/boot.iso", "pxe")
        );
    }

    #[test]
    fn rejects_missing_keys_and_ignores_extra_ones() {
        assert!(Vm::parse("name=vm-0 port=6230").is_err());
        let all = Vm::parse_all(
            "name=a port=1 power=off boot=none persistent=0 efi=0 starts=0 stops=0 resets=0 \
             media=none booted=none x=y\n\n",
        )
        .unwrap();
        assert_eq!(all.len(), 1);
    }
}
