//! FRU inventory device 0 (IPMI 2.0 §34; layout per the Platform Management FRU Information
//! Storage Definition v1.0): a common header and a product info area naming the machine. The
//! image is built from the VM view and site on each read, so it always tells the current
//! name and UUID.

use super::cc;

/// The product manufacturer field.
pub const MANUFACTURER: &str = "KubeVirt";
/// The product part/model number field.
const MODEL: &str = "VirtualMachine";
/// FRU fields hold at most 63 bytes (a 6-bit length).
const FIELD_MAX: usize = 63;
/// "No more fields" (FRU spec §13): also what an 8-bit ASCII field of length 1 would encode
/// as, so such a field is padded with a space.
const END_OF_FIELDS: u8 = 0xC1;

/// The machine's UUID as Kubernetes prints it, from the GUID in wire order (the inverse of
/// [`super::vm::uuid_to_wire`]).
pub fn uuid_string(guid: &[u8; 16]) -> String {
    let mut u = *guid;
    u.reverse();
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Zero checksum: the covered bytes and this one sum to 0 modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// An 8-bit ASCII + Latin 1 field (type 11b), cut at 63 bytes on a character boundary.
fn field(s: &str, out: &mut Vec<u8>) {
    let mut end = s.len().min(FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut b = s.as_bytes()[..end].to_vec();
    if b.len() == 1 {
        b.push(b' ');
    }
    out.push(0xC0 | b.len() as u8);
    out.extend_from_slice(&b);
}

/// The FRU image: common header, then the product info area (FRU spec §9, §12): language
/// English, manufacturer, product name (the VM's name), model, version (empty), serial (the
/// VM's UUID), asset tag and FRU file id (empty).
pub fn image(vm_name: &str, guid: &[u8; 16]) -> Vec<u8> {
    let mut area = vec![0x01, 0x00, 0x00];
    field(MANUFACTURER, &mut area);
    field(vm_name, &mut area);
    field(MODEL, &mut area);
    field("", &mut area);
    field(&uuid_string(guid), &mut area);
    field("", &mut area);
    field("", &mut area);
    area.push(END_OF_FIELDS);
    // Pad so that the area, with its checksum byte, fills whole 8-byte blocks.
    while (area.len() + 1) % 8 != 0 {
        area.push(0);
    }
    area[1] = ((area.len() + 1) / 8) as u8;
    area.push(checksum(&area));

    let mut header = vec![0x01, 0, 0, 0, 0x01, 0, 0];
    header.push(checksum(&header));
    header.extend_from_slice(&area);
    header
}

/// Get FRU Inventory Area Info (§34.1): the size of device 0, accessed by bytes.
pub fn area_info(d: &[u8], size: usize) -> Result<[u8; 3], u8> {
    match d {
        [0] => {
            let s = (size as u16).to_le_bytes();
            Ok([s[0], s[1], 0x00])
        }
        [_] => Err(cc::NOT_PRESENT),
        _ => Err(cc::REQUEST_LENGTH_INVALID),
    }
}

/// Read FRU Data (§34.2): device, offset (LS byte first), count; answers the count read and
/// the bytes, fewer at the end of the image.
pub fn read(d: &[u8], image: &[u8]) -> Result<Vec<u8>, u8> {
    let [dev, o0, o1, count] = d else {
        return Err(cc::REQUEST_LENGTH_INVALID);
    };
    if *dev != 0 {
        return Err(cc::NOT_PRESENT);
    }
    let start = u16::from_le_bytes([*o0, *o1]) as usize;
    if start >= image.len() {
        return Err(cc::PARAMETER_OUT_OF_RANGE);
    }
    let end = image.len().min(start + *count as usize);
    let mut out = vec![(end - start) as u8];
    out.extend_from_slice(&image[start..end]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::vm::uuid_to_wire;

    const UUID: [u8; 16] = [
        0x5f, 0x2e, 0x4a, 0x6c, 0x8b, 0x1d, 0x4e, 0x2f, 0x9a, 0x3b, 0x7c, 0x6d, 0x5e, 0x4f, 0x30,
        0x21,
    ];

    /// The fields of the product area, in order, as a client decodes them.
    fn fields(img: &[u8]) -> Vec<String> {
        let start = img[4] as usize * 8;
        let area = &img[start..start + img[start + 1] as usize * 8];
        let mut i = 3;
        let mut out = Vec::new();
        while area[i] != END_OF_FIELDS {
            let len = (area[i] & 0x3F) as usize;
            assert_eq!(area[i] >> 6, 0b11, "8-bit ASCII");
            out.push(String::from_utf8(area[i + 1..i + 1 + len].to_vec()).unwrap());
            i += 1 + len;
        }
        out
    }

    #[test]
    fn product_area_names_the_machine_with_valid_checksums() {
        let img = image("vm-0", &uuid_to_wire(UUID));
        assert_eq!(img[..8], [1, 0, 0, 0, 1, 0, 0, 0xFE]);
        assert_eq!(img.iter().take(8).fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let area = &img[8..];
        assert_eq!(area.len() % 8, 0);
        assert_eq!(area[1] as usize * 8, area.len());
        assert_eq!(area.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            fields(&img),
            [
                "KubeVirt",
                "vm-0",
                "VirtualMachine",
                "",
                "5f2e4a6c-8b1d-4e2f-9a3b-7c6d5e4f3021",
                "",
                ""
            ]
        );
    }

    #[test]
    fn long_and_one_byte_names() {
        let long = "n".repeat(70);
        let img = image(&long, &[0; 16]);
        assert_eq!(fields(&img)[1], "n".repeat(63));
        let img = image("a", &[0; 16]);
        assert_eq!(fields(&img)[1], "a ", "C1h would end the fields");
    }

    #[test]
    fn reads_in_pieces_and_bounds() {
        let img = image("vm-0", &[7; 16]);
        let n = img.len();
        assert_eq!(area_info(&[0], n), Ok([n as u8, 0, 0]));
        assert_eq!(area_info(&[1], n), Err(cc::NOT_PRESENT));
        assert_eq!(read(&[0, 0, 0, 8], &img).unwrap()[1..], img[..8]);
        let tail = read(&[0, (n - 3) as u8, 0, 32], &img).unwrap();
        assert_eq!(tail[0], 3);
        assert_eq!(tail[1..], img[n - 3..]);
        assert_eq!(
            read(&[0, n as u8, 0, 1], &img),
            Err(cc::PARAMETER_OUT_OF_RANGE)
        );
        assert_eq!(read(&[1, 0, 0, 1], &img), Err(cc::NOT_PRESENT));
        assert_eq!(read(&[0, 0, 0], &img), Err(cc::REQUEST_LENGTH_INVALID));
    }
}
