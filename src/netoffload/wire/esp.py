"""ESP (RFC 4303) in tunnel mode, and ESP-in-UDP (RFC 3948): the numbers.

Layout of an ESP packet in tunnel mode, as netoffload emits it::

    outer IP | [UDP 4500 (RFC 3948)] | SPI (4) | Seq (4) | IV (8, AEAD) |
    ciphertext of: inner IP packet | Padding (0..3) | Pad Length | Next Header |
    ICV (16)

Padding bytes are 1, 2, 3, ... (RFC 4303 section 2.4) and make the encrypted
part end on a 4-byte boundary; Next Header is 4 (IPv4) or 41 (IPv6) in tunnel
mode. In UDP encapsulation the first four bytes of the UDP payload are the SPI,
never zero (zero is the non-ESP marker of IKE).

The packets are built and parsed a whole batch at a time, with numpy, by
``netoffload.soft.crypto`` (encrypt and decrypt tasks); there is no per-packet
header object.
"""

from __future__ import annotations

IPPROTO_ESP = 50
IPPROTO_UDP = 17
NH_IPV4 = 4
NH_IPV6 = 41
NAT_T_PORT = 4500
