#!/usr/bin/env bash
# Makes a bare NTFS volume holding the parts of a Windows installation that winbundle reads
# from its registry, for tests/windows_inside.rs:
#   make-windows-volume.sh OUT.img VARIANT
# VARIANT:
#   server   Windows Server 2022 Datacenter (Server), AMD64, ENA + AWSNVMe + EC2Launch v2 services;
#            page files ?:\pagefile.sys, C:\Temp\pagefile2.sys and D:\pagefile.sys (another drive);
#            shadow-copy storage (the catalog and a diff area) in \System Volume Information;
#            FilesNotToSnapshot and FilesNotToBackup with patterns of every kind (variables,
#            $UserProfile$ over two profiles, /s, wildcards, another drive, an unknown variable)
#            and files they match and files they do not
#   client   Windows 11 Pro (Client), AMD64, none of the EC2 drivers; page file ?:\pagefile.sys
#   damaged  as server, but SYSTEM is a hive header followed by garbage
#   missing  as server, but there is no SYSTEM hive
#   dirty    as server, but SYSTEM's sequence numbers differ (not written back) and no logs
#   logged   as server, but SYSTEM is dirty: it names the computer WIN-EARLY-LOG, and its
#            SYSTEM.LOG1 (testdata/make-hive-log.py) holds the change to WIN-AFTER-LOG
# The hives are made by testdata/make-hive.py (an empty hive) and filled by hivexregedit
# --merge (Debian libwin-hivex-perl): a writer that is not winbundle's. Leaves OUT.SYSTEM and
# OUT.SOFTWARE beside the image (the hives as written) for an independent reader (hivexget).
# Needs root, FUSE, ntfs-3g (mkntfs), python3, libwin-hivex-perl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make-windows-volume.sh OUT.img VARIANT}
variant=${2:?usage: make-windows-volume.sh OUT.img VARIANT}
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT

# The .reg files: every key with its ancestors (hivexregedit makes no missing parent).
python3 - "$work" "$variant" <<'PY'
import sys
work, variant = sys.argv[1], sys.argv[2]

def reg(path, keys):
    seen, lines = set(), ["Windows Registry Editor Version 5.00", ""]
    for key, values in keys:
        parts = key.split("\\")
        for i in range(1, len(parts) + 1):
            k = "\\".join(parts[:i])
            if k in seen:
                continue
            seen.add(k)
            lines.append("[\\" + k + "]")
            if i == len(parts):
                for name, v in values.items():
                    if isinstance(v, int):
                        lines.append('"%s"=dword:%08x' % (name, v))
                    elif isinstance(v, list):
                        data = ("\0".join(v) + "\0\0").encode("utf-16-le")
                        lines.append('"%s"=hex(7):%s' % (name, ",".join("%02x" % b for b in data)))
                    elif isinstance(v, bytes):
                        lines.append('"%s"=hex:%s' % (name, ",".join("%02x" % b for b in v)))
                    else:
                        lines.append('"%s"="%s"' % (name, v.replace("\\", "\\\\")))
            lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")

server = variant != "client"
cs = "ControlSet001"
services = {"Tcpip": 1, "disk": 0}
if server:
    services.update({"ena": 3, "AWSNVMe": 0, "EC2Launch": 2})
system = [("Select", {"Current": 1, "Default": 1, "LastKnownGood": 2})]
system += [(cs + "\\Services\\" + s, {"Start": start, "Type": 1}) for s, start in services.items()]
system += [
    (cs + "\\Control\\ComputerName\\ComputerName", {"ComputerName": "WIN-AFTER-LOG" if variant == "logged"
        else "WIN-SRV2022" if server else "DESKTOP-11PRO"}),
    (cs + "\\Control\\Session Manager\\Environment", {"PROCESSOR_ARCHITECTURE": "AMD64"}),
    (cs + "\\Control\\Windows", {"ShutdownTime": (133_500_000_000_000_000).to_bytes(8, "little")}),
    (cs + "\\Control\\Session Manager\\Memory Management", {
        "PagingFiles": ["?:\\pagefile.sys 1024 4096", "C:\\Temp\\pagefile2.sys", "D:\\pagefile.sys 0 0"] if server
        else ["?:\\pagefile.sys"],
        "ExistingPageFiles": ["\\??\\C:\\pagefile.sys"],
    }),
    ("ControlSet002\\Services\\ena", {"Start": 3}),
]
if server:
    system += [
        (cs + "\\Control\\BackupRestore\\FilesNotToSnapshot", {
            "WUA": ["%windir%\\SoftwareDistribution\\*.* /s"],
            "OutlookOST": ["$UserProfile$\\AppData\\Local\\Microsoft\\Outlook\\*.ost"],
            "FVE": ["$AllVolumes$\\System Volume Information\\FVE.{e40ad34d-dae9-4bc7-95bd-b16218c10f72}.*"],
            # Careless or hostile: never \Windows or a profile whole, never the hives, never a
            # file that has another name elsewhere.
            "Careless": ["%windir%\\* /s", "$UserProfile$\\* /s", "%windir%\\System32\\config\\*",
                         "%ProgramData%\\Cache\\* /s"],
        }),
        (cs + "\\Control\\BackupRestore\\FilesNotToBackup", {
            "Temporary Files": ["%TEMP%\\* /s"],
            "Internet Explorer": ["%UserProfile%\\index.dat /s"],
            "Other drive": ["D:\\data\\* /s"],
            "Unknown": ["%NOSUCHVARIABLE%\\x.log"],
        }),
    ]
software = [("Microsoft\\Windows NT\\CurrentVersion", {
    "ProductName": "Windows Server 2022 Datacenter" if server else "Windows 10 Pro",
    "EditionID": "ServerDatacenter" if server else "Professional",
    "DisplayVersion": "21H2" if server else "23H2",
    "CurrentBuild": "20348" if server else "22631",
    "CurrentBuildNumber": "20348" if server else "22631",
    "UBR": 2227 if server else 4460,
    "InstallationType": "Server" if server else "Client",
    "SystemRoot": "C:\\Windows",
})]
software += [
    ("Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-18",
     {"ProfileImagePath": "%systemroot%\\system32\\config\\systemprofile"}),
    ("Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-21-1004336348-1177238915-682003330-1001",
     {"ProfileImagePath": "%SystemDrive%\\Users\\alice"}),
    ("Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\S-1-5-21-1004336348-1177238915-682003330-1002",
     {"ProfileImagePath": "C:\\Users\\bob"}),
]
reg(work + "/system.reg", system)
reg(work + "/software.reg", software)
PY
for h in SYSTEM SOFTWARE; do
  python3 "$here/make-hive.py" "$work/$h" "CMI-CreateHive{$h}"
  hivexregedit --merge "$work/$h" "$work/$(echo $h | tr A-Z a-z).reg"
done
case $variant in
  logged)
    # The state before the change: the same hive with the name's bytes as they were (same length).
    python3 -c "
import sys; b = open(sys.argv[1], 'rb').read()
old, new = 'WIN-AFTER-LOG'.encode('utf-16-le'), 'WIN-EARLY-LOG'.encode('utf-16-le')
assert b.count(old) == 1
open(sys.argv[2], 'wb').write(b.replace(old, new))" "$work/SYSTEM" "$work/SYSTEM.old"
    python3 "$here/make-hive-log.py" "$work/SYSTEM.old" "$work/SYSTEM" "$work/SYSTEM.dirty" "$work/SYSTEM.LOG1"
    mv "$work/SYSTEM.dirty" "$work/SYSTEM" ;;
  damaged) python3 -c "
import sys; b = bytearray(open(sys.argv[1], 'rb').read())
b[4096:] = bytes((i * 131 + 7) % 251 for i in range(len(b) - 4096))
open(sys.argv[1], 'wb').write(b)" "$work/SYSTEM" ;;
  dirty) python3 -c "
import struct, sys; b = bytearray(open(sys.argv[1], 'rb').read())
struct.pack_into('<I', b, 4, struct.unpack_from('<I', b, 8)[0] + 1)
c = 0
for i in range(0, 508, 4): c ^= struct.unpack_from('<I', b, i)[0]
struct.pack_into('<I', b, 508, c or 1)
open(sys.argv[1], 'wb').write(b)" "$work/SYSTEM" ;;
esac

truncate -s $((48 * 1024 * 1024)) "$out"
mkntfs -F -Q -q -L Windows -c 4096 "$out" 2>/dev/null
ntfs-3g "$out" "$mnt"
mkdir -p "$mnt/Windows/System32/config" "$mnt/Temp" "$mnt/System Volume Information" "$mnt/Users/Public"
[ "$variant" = missing ] || cp "$work/SYSTEM" "$mnt/Windows/System32/config/SYSTEM"
[ "$variant" != logged ] || cp "$work/SYSTEM.LOG1" "$mnt/Windows/System32/config/SYSTEM.LOG1"
cp "$work/SOFTWARE" "$mnt/Windows/System32/config/SOFTWARE"
head -c $((1 << 20)) /dev/urandom >"$mnt/pagefile.sys"
echo "user data that stays" >"$mnt/Users/Public/notes.txt"
if [ "$variant" != client ]; then
  head -c $((2 << 20)) /dev/urandom >"$mnt/Temp/pagefile2.sys"
  svi="$mnt/System Volume Information"
  head -c 16384 /dev/urandom >"$svi/{3808876b-c176-4e48-b7ae-04046e6cc752}"
  head -c $((3 << 20)) /dev/urandom >"$svi/{5c1a5f2e-8d3b-11ee-9a7a-0800200c9a66}{3808876b-c176-4e48-b7ae-04046e6cc752}"
  echo "kept" >"$svi/tracking.log"
  head -c 4096 /dev/urandom >"$svi/FVE.{e40ad34d-dae9-4bc7-95bd-b16218c10f72}.1"
  # What the lists match, and neighbours they do not.
  mkdir -p "$mnt/Windows/SoftwareDistribution/Download/x" "$mnt/Windows/Temp" \
    "$mnt/Users/alice/AppData/Local/Microsoft/Outlook" "$mnt/Users/bob/AppData/Local/Microsoft/Outlook" \
    "$mnt/Users/alice/deep/er" "$mnt/Windows/system32/config/systemprofile"
  head -c $((1 << 20)) /dev/urandom >"$mnt/Windows/SoftwareDistribution/Download/x/update.cab"
  head -c 8192 /dev/urandom >"$mnt/Windows/SoftwareDistribution/ReportingEvents.log"
  head -c 65536 /dev/urandom >"$mnt/Windows/Temp/setup.tmp"
  head -c 524288 /dev/urandom >"$mnt/Users/alice/AppData/Local/Microsoft/Outlook/alice.ost"
  echo "a personal folder file: kept" >"$mnt/Users/alice/AppData/Local/Microsoft/Outlook/alice.pst"
  head -c 262144 /dev/urandom >"$mnt/Users/bob/AppData/Local/Microsoft/Outlook/bob.OST"
  head -c 1000 /dev/urandom >"$mnt/Users/alice/deep/er/index.dat"
  echo "kept" >"$mnt/Users/alice/index.dat.keep"
  mkdir -p "$mnt/ProgramData/Cache" "$mnt/Windows/System32"
  echo "a library with two names" >"$mnt/Windows/System32/shared.dll"
  ln "$mnt/Windows/System32/shared.dll" "$mnt/ProgramData/Cache/shared.dll"
  head -c 4096 /dev/urandom >"$mnt/ProgramData/Cache/blob.bin"
fi
umount "$mnt"
cp "$work/SOFTWARE" "$out.SOFTWARE"
[ "$variant" = missing ] || cp "$work/SYSTEM" "$out.SYSTEM"
[ "$variant" != logged ] || cp "$work/SYSTEM.LOG1" "$out.SYSTEM.LOG1"
