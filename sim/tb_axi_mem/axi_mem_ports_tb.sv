// Test harness of the memory ports of sim/tb/axi_mem.sv: a reader (latency 5, 2 bursts
// outstanding), a paced reader (latency 2, 4 bytes per cycle) and a writer (response
// latency 3), 16-byte words, every port at the harness's pins for the cocotb test
// (sim/tb_axi_mem/tb_axi_mem.py) to drive as the design would.
module axi_mem_ports_tb (
    input  logic         clk,
    input  logic         rst,
    input  logic [63:0]  tb_seed,
    input  logic [1:0]   tb_pattern,
    input  logic [31:0]  tb_stall_q32,
    input  logic [31:0]  tb_open_max,
    input  logic [63:0]  a__araddr, input logic [7:0] a__arlen, input logic a__arvalid,
    output logic         a__arready,
    output logic [127:0] a__rdata, output logic [1:0] a__rresp, output logic a__rlast,
    output logic         a__rvalid, input logic a__rready,
    input  logic [63:0]  p__araddr, input logic [7:0] p__arlen, input logic p__arvalid,
    output logic         p__arready,
    output logic [127:0] p__rdata, output logic [1:0] p__rresp, output logic p__rlast,
    output logic         p__rvalid, input logic p__rready,
    input  logic [63:0]  w__awaddr, input logic [7:0] w__awlen, input logic w__awvalid,
    output logic         w__awready,
    input  logic [127:0] w__wdata, input logic [15:0] w__wstrb, input logic w__wlast,
    input  logic         w__wvalid, output logic w__wready,
    output logic [1:0]   w__bresp, output logic w__bvalid, input logic w__bready
);
    axi_mem_reader #(.BYTES(16), .LATENCY(5), .OUTSTANDING(2), .STREAM(1), .NAME("a")) a (
        .clk, .rst, .seed(tb_seed), .pattern(tb_pattern), .stall_q32(tb_stall_q32),
        .open_max(tb_open_max), .araddr(a__araddr), .arlen(a__arlen), .arvalid(a__arvalid),
        .arready(a__arready), .rdata(a__rdata), .rresp(a__rresp), .rlast(a__rlast),
        .rvalid(a__rvalid), .rready(a__rready));
    axi_mem_reader #(.BYTES(16), .LATENCY(2), .OUTSTANDING(4), .RATE(4.0), .STREAM(2),
                     .NAME("p")) p (
        .clk, .rst, .seed(tb_seed), .pattern(tb_pattern), .stall_q32(tb_stall_q32),
        .open_max(tb_open_max), .araddr(p__araddr), .arlen(p__arlen), .arvalid(p__arvalid),
        .arready(p__arready), .rdata(p__rdata), .rresp(p__rresp), .rlast(p__rlast),
        .rvalid(p__rvalid), .rready(p__rready));
    axi_mem_writer #(.BYTES(16), .WRITE_LATENCY(3), .STREAM(3), .NAME("w")) w (
        .clk, .rst, .seed(tb_seed), .pattern(tb_pattern), .stall_q32(tb_stall_q32),
        .open_max(tb_open_max), .awaddr(w__awaddr), .awlen(w__awlen),
        .awvalid(w__awvalid), .awready(w__awready), .wdata(w__wdata), .wstrb(w__wstrb),
        .wlast(w__wlast), .wvalid(w__wvalid), .wready(w__wready), .bresp(w__bresp),
        .bvalid(w__bvalid), .bready(w__bready));
endmodule
