/* Host program run by userspace/build.rs: prints the C layout of xmacvlan_abi.h as Rust
 * constants, so userspace/src/abi.rs can assert that its mirror matches, field by field. */
#include <stddef.h>
#include <stdio.h>
#include "xmacvlan_abi.h"

#define LAYOUT(type, name) \
	printf("pub const %s_SIZE: usize = %zu;\npub const %s_ALIGN: usize = %zu;\n", name, \
	       sizeof(struct type), name, _Alignof(struct type))
#define FIELD(type, name, field) \
	printf("pub const %s_%s: usize = %zu;\n", name, #field, offsetof(struct type, field))

int main(void)
{
	LAYOUT(xmv_key, "KEY");
	FIELD(xmv_key, "KEY", vid);
	FIELD(xmv_key, "KEY", mac);
	LAYOUT(xmv_config, "CONFIG");
	FIELD(xmv_config, "CONFIG", demux);
	FIELD(xmv_config, "CONFIG", queues);
	LAYOUT(xmv_counters, "COUNTERS");
	FIELD(xmv_counters, "COUNTERS", seen);
	FIELD(xmv_counters, "COUNTERS", tagged);
	FIELD(xmv_counters, "COUNTERS", hit);
	FIELD(xmv_counters, "COUNTERS", redirected);
	FIELD(xmv_counters, "COUNTERS", pass_no_socket);
	FIELD(xmv_counters, "COUNTERS", pass_miss);
	FIELD(xmv_counters, "COUNTERS", pass_bcast_mcast);
	FIELD(xmv_counters, "COUNTERS", pass_qinq);
	FIELD(xmv_counters, "COUNTERS", malformed);
	FIELD(xmv_counters, "COUNTERS", pass_control);
	FIELD(xmv_counters, "COUNTERS", pass_unclaimed);
	FIELD(xmv_counters, "COUNTERS", pass_too_big);
	LAYOUT(xmv_event, "EVENT");
	FIELD(xmv_event, "EVENT", kind);
	FIELD(xmv_event, "EVENT", len);
	FIELD(xmv_event, "EVENT", queue);
	FIELD(xmv_event, "EVENT", suppressed);
	FIELD(xmv_event, "EVENT", vid);
	FIELD(xmv_event, "EVENT", mac);
	printf("pub const EVENT_MALFORMED: u32 = %d;\npub const EVENT_REDIRECT_FAILED: u32 = %d;\n"
	       "pub const EVENT_TOO_BIG: u32 = %d;\npub const EVENTS_PER_SEC: u32 = %d;\n",
	       XMV_EVENT_MALFORMED, XMV_EVENT_REDIRECT_FAILED, XMV_EVENT_TOO_BIG,
	       XMV_EVENTS_PER_SEC);
	printf("pub const MAX_SLOTS: u32 = %d;\npub const MAX_QUEUES: u32 = %d;\n", XMV_MAX_SLOTS,
	       XMV_MAX_QUEUES);
	printf("pub const UNCLAIMED: u32 = %d;\npub const CLAIMED: u32 = %d;\n", XMV_UNCLAIMED,
	       XMV_CLAIMED);
	printf("pub const DEMUX_XDP: u32 = %d;\npub const DEMUX_USER: u32 = %d;\n", XMV_DEMUX_XDP,
	       XMV_DEMUX_USER);
	printf("pub const RUN_PRIORITY: u32 = %d;\n", XMV_RUN_PRIORITY);
	return 0;
}
