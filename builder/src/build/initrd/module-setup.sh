#!/bin/bash
# edgeimg dracut module: early-boot pieces that must run before the real root's PID 1.
# Installed by edgeimg into the image and named in add_dracutmodules.

check() {
    return 255
}

depends() {
    echo systemd
}

install() {
    inst_multiple mount mountpoint mkdir mv sync tr cat
    inst_script "$moddir/edgeimg-machine-id.sh" /usr/lib/edgeimg/initrd-machine-id
    inst_simple "$moddir/edgeimg-machine-id.service" "$systemdsystemunitdir/edgeimg-machine-id.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target edgeimg-machine-id.service
}
