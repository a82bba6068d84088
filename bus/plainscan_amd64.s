//go:build amd64 && !purego

#include "textflag.h"

// func plainOutPrefixAVX2(p *byte, n int) int
//
// The index of the first byte of p[:n&^31] that plainOut must look at
// (below 0x20, of 0x80 and up, '"', '\\', '<', '>' or '&'), or n&^31 when
// there is none: 32 bytes a compare each, one branch per 32 bytes.
// The signed compare 0x20 > c is true both for c below 0x20 and for c of
// 0x80 and up (negative as signed bytes).
TEXT ·plainOutPrefixAVX2(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	ANDQ $~31, CX
	XORQ AX, AX
	MOVQ $0x20, DX
	MOVQ DX, X1
	VPBROADCASTB X1, Y1
	MOVQ $0x22, DX
	MOVQ DX, X2
	VPBROADCASTB X2, Y2
	MOVQ $0x5c, DX
	MOVQ DX, X3
	VPBROADCASTB X3, Y3
	MOVQ $0x3c, DX
	MOVQ DX, X4
	VPBROADCASTB X4, Y4
	MOVQ $0x3e, DX
	MOVQ DX, X5
	VPBROADCASTB X5, Y5
	MOVQ $0x26, DX
	MOVQ DX, X6
	VPBROADCASTB X6, Y6

outloop:
	CMPQ AX, CX
	JGE  outdone
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPGTB Y0, Y1, Y7
	VPCMPEQB Y0, Y2, Y8
	VPCMPEQB Y0, Y3, Y9
	VPCMPEQB Y0, Y4, Y10
	VPCMPEQB Y0, Y5, Y11
	VPCMPEQB Y0, Y6, Y12
	VPOR     Y8, Y7, Y7
	VPOR     Y10, Y9, Y9
	VPOR     Y12, Y11, Y11
	VPOR     Y9, Y7, Y7
	VPOR     Y11, Y7, Y7
	VPMOVMSKB Y7, DX
	TESTL    DX, DX
	JNZ      outfound
	ADDQ     $32, AX
	JMP      outloop

outfound:
	BSFL DX, DX
	ADDQ DX, AX

outdone:
	VZEROUPPER
	MOVQ AX, ret+16(FP)
	RET

// func plainInPrefixAVX2(p *byte, n int) int
//
// The index of the first byte of p[:n&^31] that plainString must look at
// (below 0x20, of 0x80 and up, '"' or '\\'), or n&^31 when there is none.
TEXT ·plainInPrefixAVX2(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	ANDQ $~31, CX
	XORQ AX, AX
	MOVQ $0x20, DX
	MOVQ DX, X1
	VPBROADCASTB X1, Y1
	MOVQ $0x22, DX
	MOVQ DX, X2
	VPBROADCASTB X2, Y2
	MOVQ $0x5c, DX
	MOVQ DX, X3
	VPBROADCASTB X3, Y3

inloop:
	CMPQ AX, CX
	JGE  indone
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPGTB Y0, Y1, Y7
	VPCMPEQB Y0, Y2, Y8
	VPCMPEQB Y0, Y3, Y9
	VPOR     Y8, Y7, Y7
	VPOR     Y9, Y7, Y7
	VPMOVMSKB Y7, DX
	TESTL    DX, DX
	JNZ      infound
	ADDQ     $32, AX
	JMP      inloop

infound:
	BSFL DX, DX
	ADDQ DX, AX

indone:
	VZEROUPPER
	MOVQ AX, ret+16(FP)
	RET
