/* The one definition of everything the XDP classifier and userspace share.
 * Mirrored by userspace/src/abi.rs; its tests compare both layouts, field by field,
 * against what the C compiler makes of this header (see ebpf/abi_layout.c). */
#ifndef XMACVLAN_ABI_H
#define XMACVLAN_ABI_H

#include <linux/types.h>

/* Default map sizes; userspace resizes xmv_xsks and xmv_xsk_max_len at load time
 * (slots x queues). */
#define XMV_MAX_SLOTS 4096
#define XMV_MAX_QUEUES 64

/* The classifier's default run priority in a libxdp dispatcher chain (lower runs first). */
#define XMV_RUN_PRIORITY 50

/* How claimed frames are steered (xmv_config.demux). */
#define XMV_DEMUX_XDP 0  /* xsks[slot * queues + rx_queue]: one socket per endpoint per queue */
#define XMV_DEMUX_USER 1 /* xsks[rx_queue]: one socket per queue, a worker demuxes in userspace */

/* Classifier key: 802.1Q VLAN id (0 = untagged or priority-tagged) and destination MAC. */
struct xmv_key {
	__u16 vid;
	__u8 mac[6];
};

/* Load-time configuration, a read-only global of the program. */
struct xmv_config {
	__u32 demux;
	__u32 queues;
};

/* Per-slot claim flag (xmv_claimed[slot]): a known endpoint's frames are redirected only while
 * it is XMV_CLAIMED; otherwise they go to its kernel device (pass_unclaimed). Endpoints served
 * by an application port are claimed only while a port is connected. */
#define XMV_UNCLAIMED 0
#define XMV_CLAIMED 1

/* Per-CPU counters. Every frame lands in exactly one of the verdict counters:
 * seen = redirected + pass_no_socket + pass_miss + pass_bcast_mcast + pass_qinq + malformed
 *        + pass_control + pass_unclaimed + pass_too_big.
 * tagged and hit are classifications of seen; hit = redirected + pass_no_socket + pass_too_big. */
struct xmv_counters {
	__u64 seen;
	__u64 tagged;
	__u64 hit;
	__u64 redirected;
	__u64 pass_no_socket;   /* key known, but no socket in the XSKMAP for this queue */
	__u64 pass_miss;        /* unicast to a (vid, mac) no endpoint owns */
	__u64 pass_bcast_mcast; /* group-bit destinations: ARP, ND, broadcast, multicast */
	__u64 pass_qinq;        /* 802.1ad outer tag or a second tag: left to the kernel */
	__u64 malformed;        /* shorter than its Ethernet/802.1Q header */
	__u64 pass_control;     /* an endpoint's ARP, ICMP, ICMPv6 (ND): its kernel device answers */
	__u64 pass_unclaimed;   /* a known endpoint not claimed now (no port connected) */
	__u64 pass_too_big;     /* longer than its socket takes whole (xmv_xsk_max_len) */
};

/* Kernel-side events for the daemon's debug log, through the ring buffer xmv_events. At most
 * XMV_EVENTS_PER_SEC per CPU are sent; the rest are counted in the next event's `suppressed`. */
#define XMV_EVENT_MALFORMED 1       /* shorter than its Ethernet/802.1Q header */
#define XMV_EVENT_REDIRECT_FAILED 2 /* an endpoint's frame no socket took (pass_no_socket) */
#define XMV_EVENT_TOO_BIG 3         /* an endpoint's frame longer than its socket takes */
#define XMV_EVENTS_PER_SEC 16

struct xmv_event {
	__u32 kind;
	__u32 len;        /* frame length, every buffer of a multi-buffer frame */
	__u32 queue;      /* receive queue */
	__u32 suppressed; /* events this CPU held back (rate limit, full ring) since its last one */
	__u16 vid;
	__u8 mac[6];      /* destination MAC; zero when the frame is too short to hold one */
};

/* Per-CPU state of the event rate limit. */
struct xmv_event_budget {
	__u64 window_start;
	__u32 sent;
	__u32 suppressed;
};

#endif
