#!/usr/bin/env bash
# Build the tiny bare-metal test guests (x86-64 ELF, a few lines of assembly, binutils only).
# Firecracker boots them with the Linux 64-bit boot protocol (%rsi = boot_params). Each prints
#   HELLO-FROM-TINY-GUEST
#   CMDLINE:<the kernel command line Firecracker passed>
# on the serial port, then tiny.elf resets the VM (i8042, Firecracker exits 0) and tiny-hang.elf
# halts forever (a VM that only ends when it is killed).
# Idempotent. Usage: scripts/build-tiny-guest.sh [DEST_DIR]   (default /var/tmp/flake-pilot/guest)
set -euo pipefail
DEST=${1:-${FLAKE_STATE:-/var/tmp/flake-pilot}/guest}
if ! command -v as >/dev/null || ! command -v ld >/dev/null; then
  echo "build-tiny-guest: 'as' and 'ld' are needed (apt-get install binutils)" >&2; exit 1
fi
mkdir -p "$DEST"
src="$DEST/tiny.S"
cat > "$src.new" <<'ASM'
    .globl _start
_start:
    mov %rsi, %rbx              # boot_params (zero page)
    lea hello(%rip), %rsi
    call puts
    mov 0x228(%rbx), %esi       # hdr.cmd_line_ptr
    call puts
    lea crlf(%rip), %rsi
    call puts
.ifdef HANG
1:  cli
    hlt
    jmp 1b
.else
    movb $0xfe, %al             # i8042 reset: Firecracker ends with exit 0
    outb %al, $0x64
1:  hlt
    jmp 1b
.endif
puts:                           # write the NUL-terminated string at %rsi to COM1
    movw $0x3f8, %dx
2:  movb (%rsi), %al
    testb %al, %al
    jz 3f
    outb %al, %dx
    inc %rsi
    jmp 2b
3:  ret
hello: .asciz "HELLO-FROM-TINY-GUEST\r\nCMDLINE:"
crlf:  .asciz "\r\n"
ASM
if [ -f "$DEST/tiny.elf" ] && [ -f "$DEST/tiny-hang.elf" ] && cmp -s "$src.new" "$src"; then
  rm -f "$src.new"; exit 0
fi
mv -f "$src.new" "$src"
build() {  # build OUT [as flags]
  local out=$1; shift
  as --64 "$@" -o "$DEST/$out.o" "$src"
  ld -m elf_x86_64 -static -nostdlib -Ttext=0x1000000 -e _start -o "$DEST/$out.tmp" "$DEST/$out.o"
  rm -f "$DEST/$out.o"; mv -f "$DEST/$out.tmp" "$DEST/$out"
}
build tiny.elf
build tiny-hang.elf --defsym HANG=1
echo "build-tiny-guest: $DEST/tiny.elf $DEST/tiny-hang.elf"
