// SPDX-License-Identifier: GPL-2.0
// The lab's feed: every frame the generator sends into the feed veth is redirected into the
// lab's wire with XDP_REDIRECT. The wire's ndo_xdp_xmit hands it to the lab NIC as an
// xdp_frame, no skb attached, as a NIC's DMA buffer would arrive (see bench/src/ingress.rs).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Interface index of the wire (in the wire namespace), set by the loader.
volatile const __u32 wire_ifindex = 0;

SEC("xdp")
int feed_wire(struct xdp_md *ctx)
{
	return bpf_redirect(wire_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
